"""``vlfeedback annotate``: a judge rates every response of every instruction on the three aspects, resumably.

    vlfeedback annotate --input responses/ --out annotated/ --base-url https://api.openai.com/v1 \\
        --judge-model gpt-4o --concurrency 64 --shuffle --max-cost 200

One call per instruction with the image; replies are validated strictly and re-asked (bounded) when malformed.
Every paid call is committed to ``OUT/annotate/state.sqlite`` as soon as it returns, keyed by the item's content
hash, so a killed run re-run with the same command pays for nothing twice. The last step assembles the release
layout (``OUT/vlfeedback.jsonl`` + ``merged_images/`` + ``judge.json``) from the store; see ``assemble``.

Before any work the endpoint is probed (unreachable, 404, refused key: one line and exit 2); during the run a
breaker stops after repeated identical connection failures. A finished run whose failed + refused + invalid rows
pass ``--max-fail-rate`` exits 1 with the reasons counted (``commands._annotate``).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlfeedback_kit.builders.pipeline.cost import (
    DEFAULT_TILES,
    Price,
    call_cost,
    estimate_tokens,
    load_prices,
    price_for,
    require_price,
    unpriced_note,
)
from vlfeedback_kit.builders.pipeline.endpoint import (
    RetryPolicy,
    api_key_from_env,
    base_urls,
    check_endpoint,
    redact_url,
)
from vlfeedback_kit.builders.pipeline.items import plan
from vlfeedback_kit.builders.pipeline.judge import RESPONSE_FORMATS, JudgeSettings, Template, load_template
from vlfeedback_kit.builders.pipeline.judging import STAGE_DIR, JudgeJob, Judging
from vlfeedback_kit.builders.pipeline.layout import StageInput, check_out, open_input
from vlfeedback_kit.builders.pipeline.store import Store
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json

STATE_FILE = "state.sqlite"
SETTINGS_FLAGS = (
    "--judge-model, --template, --shuffle, --seed, --temperature, --max-tokens, --image-detail and --response-format"
)
IMAGE_DETAILS = ("low", "high", "auto")


def state_path(out_dir: Path) -> Path:
    """Where a run's store lives."""
    return out_dir / STAGE_DIR / STATE_FILE


@dataclass
class AnnotateOptions:
    """Everything ``annotate`` needs; the CLI flags map one to one (``base_url``: one URL, or the replicas of one
    deployment as a list or comma-separated; ``concurrency`` is per replica)."""

    input_dir: Path
    out_dir: Path
    base_url: str | Sequence[str]
    judge_model: str
    api_key_env: str = "OPENAI_API_KEY"
    template: Path | None = None
    concurrency: int = 16
    timeout: float = 120.0
    max_retries: int = 8
    max_attempts: int = 3
    shuffle: bool = False
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 2048
    image_detail: str = "high"
    response_format: str = "text"
    max_fail_rate: float = 0.05
    shard: tuple[int, int] = (0, 1)
    batch: bool = False
    batch_id: str | None = None
    poll_interval: float = 60.0
    no_wait: bool = False
    prices: Path | None = None
    dry_run: bool = False
    max_cost: float | None = None
    retry_failed: bool = False
    progress: bool = True
    base_urls: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.input_dir, self.out_dir = Path(self.input_dir), Path(self.out_dir)
        self.base_urls = base_urls(self.base_url, "--base-url")
        checks = {
            "--concurrency must be at least 1": self.concurrency < 1,
            "--max-attempts must be at least 1": self.max_attempts < 1,
            "--max-retries must be at least 0": self.max_retries < 0,
            "--timeout must be positive": self.timeout <= 0,
            "--max-cost must be positive": self.max_cost is not None and self.max_cost <= 0,
            f"--image-detail must be one of {', '.join(IMAGE_DETAILS)}": self.image_detail not in IMAGE_DETAILS,
            f"--response-format must be one of {', '.join(RESPONSE_FORMATS)}": self.response_format
            not in RESPONSE_FORMATS,
            "--max-fail-rate must be between 0 and 1 (e.g. 0.05 for 5%)": not 0 <= self.max_fail_rate <= 1,
            "--batch-id needs --batch": self.batch_id is not None and not self.batch,
            "--no-wait needs --batch": self.no_wait and not self.batch,
            "--poll-interval must be positive": self.poll_interval <= 0,
            "--batch sends to one endpoint (the OpenAI Batch API): give one --base-url": self.batch
            and len(self.base_urls) > 1,
        }
        for message, failed in checks.items():
            if failed:
                raise UserError(message)

    @property
    def retry(self) -> RetryPolicy:
        """How transient failures of one request are retried."""
        return RetryPolicy(max_retries=self.max_retries)

    def settings(self, template: Template) -> JudgeSettings:
        """The judge settings that enter every content key."""
        return JudgeSettings(
            model=self.judge_model,
            template_sha256=template.sha256,
            shuffle_seed=self.seed if self.shuffle else None,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            image_detail=self.image_detail,
            response_format=self.response_format,
            seed=self.seed,
        )


def as_recorded(settings: JudgeSettings, recorded: dict | None) -> JudgeSettings:
    """A store made before requests carried a seed keeps its content keys: the default ``--seed`` is then not sent
    (a different one is a changed setting, refused by ``bind``)."""
    if recorded is not None and "seed" not in recorded and settings.seed == 0:
        return replace(settings, seed=None)
    return settings


def estimate(
    folder: StageInput, settings: JudgeSettings, template: Template, options: AnnotateOptions, price: Price | None
) -> dict:
    """``--dry-run``: what judging the items not yet finished would cost, before spending anything (tokens only,
    and the cost null, when the price table has no price for the judge)."""
    items = plan(folder, settings, template, options.shard, sizes=True).unique()
    path = state_path(options.out_dir)
    finished: dict[str, str] = {}
    if path.is_file():
        with Store(path, lock=False) as store:
            settings = as_recorded(settings, store.meta("judge"))
            store.bind("judge", settings.to_dict(), SETTINGS_FLAGS, record=False)
            finished = store.finished()
    todo = [p for p in items if p.key not in finished]
    prompt = completion = 0
    tiles = price or DEFAULT_TILES
    for planned in todo:
        p, c = estimate_tokens(planned.prompt_chars, planned.image_size, planned.n, settings.image_detail, tiles)
        prompt, completion = prompt + p, completion + c
    usd = call_cost(prompt, completion, price, batch=options.batch)
    unpriced = {} if price else {"cost_unknown": unpriced_note(settings.model)}
    return {
        "dry_run": True,
        "judge_model": settings.model,
        "items": len(items),
        "finished": len(items) - len(todo),
        "to_judge": len(todo),
        "estimated_prompt_tokens": prompt,
        "estimated_completion_tokens": completion,
        "estimated_cost_usd": round(usd, 4) if usd is not None else None,
        "mean_cost_per_item_usd": (round(usd / len(todo), 6) if todo else 0.0) if usd is not None else None,
        **unpriced,
        "batch": options.batch,
        "assumes": "4 characters per text token, the price table's image tile rule, one call per item (no re-asks)",
    }


def annotate(options: AnnotateOptions) -> dict:
    """Judge the input into ``options.out_dir`` and assemble the release layout there; returns the report."""
    from huggingface_hub.utils import tqdm

    from vlfeedback_kit.builders.pipeline.assemble import REPORT_FILE, assemble

    check_out(options.input_dir, options.out_dir)
    template = load_template(options.template)
    settings = options.settings(template)
    prices = load_prices(options.prices)
    price = price_for(settings.model, prices)
    if options.dry_run:
        with open_input(options.input_dir) as folder:
            return estimate(folder, settings, template, options, price)
    if options.max_cost is not None:
        require_price(settings.model, prices, "--max-cost")
    api_key = api_key_from_env(options.api_key_env)
    for line in check_endpoint(
        options.base_urls, api_key, options.timeout, key_flag=f"--api-key-env ({options.api_key_env})"
    ):
        print(f"vlfeedback annotate: {line}", file=sys.stderr)
    with open_input(options.input_dir) as folder, Store(state_path(options.out_dir)) as store:
        settings = as_recorded(settings, store.meta("judge"))
        store.bind("judge", settings.to_dict(), SETTINGS_FLAGS)
        store.bind("shard", list(options.shard), "--shard")
        store.bind("template_texts", template.texts, "--template")
        store.put_meta("template", {"source": template.describe(), "text": template.text})
        reopened = store.reopen(("failed", "refused")) if options.retry_failed else 0
        work = plan(folder, settings, template, options.shard, sizes=options.max_cost is not None)
        finished = store.finished()
        todo = [p for p in work.unique() if p.key not in finished]
        bar = tqdm(
            total=len(work.unique()),
            initial=len(work.unique()) - len(todo),
            desc="annotate",
            unit=" items",
            disable=not options.progress,
            smoothing=0.05,
        )
        job = JudgeJob(options, settings, template, store, price, folder, bar)
        try:
            if options.batch:
                from vlfeedback_kit.builders.pipeline.batch import run_batches

                stats = run_batches(job, work, api_key)
            else:
                stats = asyncio.run(Judging(job).run(todo, api_key))
        finally:
            bar.close()
        report = assemble(folder, options.out_dir, [store], work)
    report["run"] = {**stats.to_dict(), "reopened": reopened}
    report["endpoint"] = ", ".join(redact_url(url) for url in options.base_urls)
    report["template"] = template.source
    report["pending_reasons"] = dict(Counter(stats.pending.values()))
    write_json(options.out_dir / STAGE_DIR / REPORT_FILE, report)
    return report
