"""``vlfeedback eval run`` and ``eval score`` as functions: generate (resumable), judge (cached), score — each
step on files under ``DIR/<label>/<benchmark>/``.

The judge is checked (key, price for ``--max-cost``, endpoint) before anything is generated. ``--max-cost`` is
one budget for the whole run: it caps what the judge ledgers under ``DIR`` hold, earlier runs included. A
benchmark left incomplete is named in ``run.json``'s ``incomplete`` (one line each, which the CLI prints before
exiting 3); a judge that stops answering stops the run there (the next benchmarks would fail the same way).

    vlfeedback eval run --benchmark mme,mmvet --data mme=MME/ --data mmvet=mm-vet/ --adapter runs/silkie \
        --compare-base --judge-model gpt-4-0613 --judge-base-url https://api.openai.com/v1 --out evals/silkie
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval import generation, mme, mmhal, mmvet, redteam, winrate
from vlfeedback_kit.eval.generation import BASE_LABEL, SILKIE_LABEL, ResponseLog, Side
from vlfeedback_kit.eval.items import Item
from vlfeedback_kit.eval.judging import CACHE_FILE, STOPPED_BY_JUDGE, JudgeConfig, ledger_spend, make_budget, preflight
from vlfeedback_kit.eval.scoring import BENCHMARKS, JUDGED, incomplete_line, score_judged, score_mme
from vlfeedback_kit.eval.spec import build_prompt, generation_settings, load_spec, prompt_family
from vlfeedback_kit.files import write_json
from vlfeedback_kit.hub_ids import is_hub_id, split_revision

if TYPE_CHECKING:
    from vlfeedback_kit.builders.pipeline.cost import Budget

LOADERS = {"mme": mme.load, "mmhal": mmhal.load, "mmvet": mmvet.load, "redteam": redteam.load,
           "winrate": winrate.load}  # fmt: skip
RUN_FILE = "run.json"


@dataclass
class RunOptions:
    """Everything ``eval run`` needs; the CLI flags map one to one."""

    benchmarks: list[str]
    data: dict[str, str]
    out: Path
    model: str | None = None
    adapter: str | None = None
    model_revision: str | None = None
    adapter_revision: str | None = None
    compare_base: bool = False
    engine: str = "transformers"
    base_url: str | list[str] | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge: JudgeConfig | None = None
    runs: int = 1
    batch_size: int = 8
    limit: int | None = None
    prompt_family: str | None = None
    max_new_tokens: int | None = None
    label: str | None = None
    concurrency: int = 16
    progress: bool = True
    shard: tuple[int, int] = (0, 1)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse incompatible options up front, naming the flag to change."""
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise UserError(f"--benchmark {','.join(unknown)}: unknown (known: {','.join(BENCHMARKS)})")
        judged = [b for b in self.benchmarks if b in JUDGED]
        if judged and (self.judge is None or not self.judge.model):
            raise UserError(
                f"--judge-model is required for {', '.join(judged)}: name a pinned judge snapshot (e.g. "
                "gpt-4-0613 for MM-Vet as the paper); there is no default"
            )
        if judged and not self.judge.base_url:
            raise UserError(f"--judge-base-url is required for {', '.join(judged)}")
        missing = [b for b in self.benchmarks if b not in self.data]
        if missing:
            raise UserError(f"--data {missing[0]}=PATH is missing (one --data NAME=PATH per benchmark)")
        if "winrate" in self.benchmarks and not self.compare_base:
            raise UserError("--benchmark winrate compares Silkie with its base: add --compare-base")
        if self.compare_base and not self.adapter:
            raise UserError("--compare-base needs --adapter (the base is the model without it)")
        if self.engine not in ("transformers", "openai"):
            raise UserError(f"--engine {self.engine}: use transformers or openai")
        if self.engine == "openai" and (not self.base_url or not self.model):
            raise UserError("--engine openai needs --base-url and --model (the served model name)")
        if self.runs < 1:
            raise UserError("--runs must be at least 1")

    def record(self) -> dict:
        """The run's settings as recorded in run.json (no secrets: API keys are named by variable only)."""
        values = asdict(self)
        values["out"] = str(self.out)
        values["judge"] = self.judge.record() if self.judge else None
        if self.base_url:
            from vlfeedback_kit.builders.pipeline.endpoint import base_urls, redact_url

            values["base_url"] = ", ".join(redact_url(url) for url in base_urls(self.base_url))
        return values


_HUB_FILES = {"winrate": ["README.md", "data/raw/test-*"]}
"""What a benchmark reads of a Hub dataset, where it is not everything (winrate: the card and the raw test split,
never the pairs and their images)."""


def resolve_data(name: str, location: str) -> Path:
    """A local path as is; a Hub dataset id ``ORG/NAME[@REV]`` (e.g. ``lmms-lab/MME``) downloaded at that revision
    (any ``HF_ENDPOINT``; the files the loaders read: Parquet, JSON, JSONL and images)."""
    if Path(location).exists():
        return Path(location)
    if not is_hub_id(location, revision=True):
        raise UserError(f"--data {name}={location}: no such file or folder, and not a Hub dataset id ORG/NAME[@REV]")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, revision = split_revision(location)
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=_HUB_FILES.get(name, ["*.parquet", "*.json", "*.jsonl", "*.jpg", "*.png"]),
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as err:
        raise UserError(
            f"--data {name}={location}: cannot download the Hub dataset ({type(err).__name__}); "
            "download the benchmark and pass its local path"
        ) from err


def load_items(name: str, location: str, limit: int | None = None) -> list[Item]:
    """A benchmark's items from a local path or a Hub dataset id (the first ``limit`` when set)."""
    items = LOADERS[name](resolve_data(name, location))
    return items[:limit] if limit else items


def _sides(options: RunOptions) -> list[Side]:
    from vlfeedback_kit.serving import BASE, SILKIE

    openai = options.engine == "openai"
    base_route = options.model if openai else BASE
    silkie_route = options.adapter if openai else SILKIE
    base = Side(BASE_LABEL, base_route, {"model": options.model, "adapter": None})
    silkie = Side(options.label or SILKIE_LABEL, silkie_route, {"model": options.model, "adapter": options.adapter})
    if options.compare_base:
        return [silkie, base]
    if options.adapter:
        return [silkie]
    return [Side(options.label or BASE_LABEL, base_route, {"model": options.model, "adapter": None})]


def run(options: RunOptions) -> dict:
    """Generate, judge and score every benchmark; returns the summary written to ``DIR/run.json``."""
    options.check()
    budget = None
    if any(name in JUDGED for name in options.benchmarks):
        if not options.judge.dry_run:
            preflight(options.judge)  # a dead judge, a missing key: one line now, not after the generation
        budget = make_budget(options.judge, ledger_spend(options.out.glob(f"*/*/{CACHE_FILE}")))
    from vlfeedback_kit.eval.shards import shard_items  # --shard: this machine's items (eval assemble merges)

    items = {name: shard_items(name, load_items(name, options.data[name], options.limit), options.shard)
             for name in options.benchmarks}  # fmt: skip
    if "winrate" in items:  # held-out must be true: never a win rate on prompts the adapter trained on
        winrate.refuse_trained(items["winrate"], options.data["winrate"], options.adapter)
    sides = _sides(options)
    summary: dict = {"options": options.record(), "model_loads": 0, "generated": {}, "scores": {}, "incomplete": []}
    answer, family, provenance = None, options.prompt_family or "default", {}
    if options.engine == "transformers":
        from vlfeedback_kit import serving

        served = serving.load(options.model, options.adapter, options.model_revision, options.adapter_revision)
        summary["model_loads"] += 1
        provenance = served.provenance()
        family = options.prompt_family or prompt_family(getattr(served.model.config, "model_type", None))
    for name in options.benchmarks:
        spec = load_spec(name)
        settings = generation_settings(spec, options.max_new_tokens)
        prompts = [build_prompt(spec, family, item.question) for item in items[name]]
        if options.engine == "transformers":
            answer = generation.transformers_answerer(served, settings)
            sides_now = [Side(s.label, s.route, {**provenance, **({"adapter": None, "adapter_revision": None}
                                                                  if s.label == BASE_LABEL else {})})
                         for s in sides]  # fmt: skip
        else:
            from vlfeedback_kit.builders.pipeline.endpoint import api_key_from_env

            answer = generation.openai_answerer(options.base_url, api_key_from_env(options.api_key_env), settings,
                                                options.concurrency)  # fmt: skip
            sides_now = sides
        logs = {s.label: ResponseLog(options.out / s.label / name / generation.RESPONSES) for s in sides_now}
        try:
            made = generation.generate(items[name], prompts, sides_now, logs, answer, options.batch_size,
                                       {**settings.to_dict(), "prompt_family": family}, options.engine,
                                       options.progress)  # fmt: skip
        finally:
            for log in logs.values():
                log.close()
        summary["generated"][name] = made
        scores = score_labels(name, items[name], options.out, [s.label for s in sides_now], options.judge,
                              options.runs, options.progress, budget)  # fmt: skip
        summary["scores"][name] = scores
        lines = [incomplete_line(result, f"{name} ({label})") for label, result in scores.items()]
        summary["incomplete"] += [line for line in lines if line]
        if any(result.get("stopped_by") == STOPPED_BY_JUDGE for result in scores.values()):
            break
    write_json(options.out / RUN_FILE, summary)
    return summary


def responses_of(path: Path) -> dict[str, str]:
    """id → response of a responses.jsonl."""
    return {key: record["response"] for key, record in generation.read_responses(path).items()}


def score_labels(
    name: str,
    items: list[Item],
    out: Path,
    labels: list[str],
    judge: JudgeConfig | None,
    runs: int = 1,
    progress: bool = True,
    budget: Budget | None = None,
) -> dict:
    """Score each label's saved responses of one benchmark (winrate: the first label against the base); stops
    after a label whose judging the judge stopped (every later label would fail the same way)."""
    results = {}
    for label in labels:
        folder = out / label / name
        responses = responses_of(folder / generation.RESPONSES)
        if name == "mme":
            results[label] = score_mme(items, responses, folder)
        elif name == "winrate":
            if label == BASE_LABEL:
                continue
            other = responses_of(out / BASE_LABEL / name / generation.RESPONSES)
            results[label] = score_judged(name, items, responses, folder, judge, runs, other, (label, BASE_LABEL),
                                          progress, budget=budget)  # fmt: skip
        else:
            results[label] = score_judged(name, items, responses, folder, judge, runs, progress=progress,
                                          budget=budget)  # fmt: skip
        if name == "mmhal":
            mmhal.write_official(folder / "response_template.json", items, responses)
        elif name == "mmvet":
            mmvet.write_official(folder / "results.json", responses)
        if results[label].get("stopped_by") == STOPPED_BY_JUDGE:
            break
    return results


def score_file(
    name: str,
    responses_path: Path,
    out: Path,
    data: str | None = None,
    judge: JudgeConfig | None = None,
    runs: int = 1,
    progress: bool = True,
) -> dict:
    """``eval score``: score saved responses — the official output layout of the benchmark (MME folder, filled
    MMHal template, MM-Vet results dict) or our responses.jsonl — without a model."""
    if name in JUDGED and (judge is None or not judge.model):
        raise UserError(f"--judge-model is required to score {name}: name a pinned judge snapshot; no default")
    responses_path = Path(responses_path)
    cache = out.with_name(out.name + ".judge-cache.sqlite")
    folder = out.parent / (out.stem + ".files")
    if name == "mme":
        if responses_path.is_dir():
            result = {"benchmark": "mme", "complete": True, **mme.score(mme.read_official(responses_path))}
        else:
            items = load_items("mme", data) if data else None
            if items is None:
                raise UserError("scoring an MME responses.jsonl needs --data mme=PATH (the questions and answers)")
            result = score_mme(items, responses_of(responses_path))
    elif name == "mmhal" and responses_path.suffix == ".json":
        items, responses = mmhal.read_official(responses_path)
        result = score_judged(name, items, responses, folder, judge, runs, progress=progress, cache_path=cache)
    else:
        if not data:
            raise UserError(f"scoring {name} needs --data {name}=PATH (the questions and answers)")
        items = load_items(name, data)
        responses = (
            mmvet.read_official(responses_path)
            if responses_path.suffix == ".json" and name == "mmvet"
            else responses_of(responses_path)
        )
        result = score_judged(name, items, responses, folder, judge, runs, progress=progress, cache_path=cache)
    write_json(out, result)
    return result
