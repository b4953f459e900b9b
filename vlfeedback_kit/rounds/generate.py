"""Stage 1 of a round: the current policy (base + adapter k−1) answers every prompt ``samples`` times.

Every sample uses the same decoding settings and its own seed, a function of (seed, round, prompt id, draw) only
(:func:`vlfeedback_kit.serving.item_seed` / ``draw_seed``): RLAIF-V's deconfounded candidates, so pair differences
are about content, not style. Local generation goes through :func:`vlfeedback_kit.serving.sample` (one processor
call and one vision encode per image for all n samples); ``engine: openai`` hands the round to the pipeline's
``decode`` with a pool of n members on the vLLM server that serves the policy by name.

The output is a pipeline-shaped release folder (``responses.jsonl`` + ``merged_images/``) that ``annotate`` judges.
Answers are committed per batch of prompts to ``generate/state.sqlite``: a killed run re-run redoes only the prompts
whose answers were not committed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from vlfeedback_kit.builders.pipeline.layout import JsonlWriter, LayoutWriter, Line, open_input
from vlfeedback_kit.builders.pipeline.store import Store
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json
from vlfeedback_kit.rounds.config import RoundsConfig

OUTPUT_JSONL = "responses.jsonl"
STAGE_DIR = "generate"
DROPPED_KEYS = ("models", "completions", "annotations")
"""Keys of a prompt row that belong to an earlier release's answers, not to the prompt."""


def sample_names(round_k: int, samples: int) -> list[str]:
    """The ``model`` name of each sample of a round's row (distinct, as the release layout requires)."""
    return [f"round{round_k}-sample{j}" for j in range(samples)]


def prompt_seed(config: RoundsConfig, round_k: int, item_id: str) -> int:
    """The seed of a prompt in a round (its draws derive from it with ``serving.draw_seed``)."""
    from vlfeedback_kit.serving import item_seed

    return item_seed(config.generation.seed, f"round {round_k}/{item_id}")


def settings_record(config: RoundsConfig, policy: dict) -> dict:
    """What a round's answers were made with (bound in the store: a changed setting is refused on resume)."""
    return {"generation": config.to_dict()["generation"], "samples": config.samples, "policy": policy,
            "engine": config.engine}  # fmt: skip


def read_prompts(folder) -> tuple[list[tuple[Line, bytes]], list[dict]]:
    """The usable prompt rows of a release-layout folder with their image bytes (each image decoded in full), and
    the failures-file entries of the rows that cannot be asked (no prompt, no or a broken image)."""
    usable, invalid = [], []
    for line in folder.lines():
        text = (line.row or {}).get("prompt")
        image, problem = folder.usable(line, None if isinstance(text, str) else "'prompt' is missing or not a string")
        if problem:
            invalid.append(line.invalid(problem))
        else:
            usable.append((line, image))
    return usable, invalid


def generate_local(
    config: RoundsConfig,
    round_k: int,
    policy: dict,
    out_dir: Path,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> dict:
    """Sample ``config.samples`` answers per prompt with the local policy into ``out_dir``; ``after_batch(done)``
    runs after each committed batch (a test kills the stage there)."""
    from huggingface_hub.utils import tqdm
    from PIL import Image

    from vlfeedback_kit import serving

    settings = serving.GenerationSettings(**config.to_dict()["generation"])
    with open_input(config.prompts, "prompts") as folder, Store(out_dir / STAGE_DIR / "state.sqlite") as store:
        store.bind("settings", settings_record(config, policy), "the rounds config (generation, samples, policy)")
        usable, invalid = read_prompts(folder)
        rows = [line for line, _ in usable]
        finished = store.finished()
        todo = [line for line in rows if line.row["id"] not in finished]
        if todo:
            served = serving.load(policy["model"], policy["adapter"], adapter_revision=policy["adapter_revision"],
                                  dtype=config.dtype)  # fmt: skip
            with tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"round {round_k} generate",
                      unit=" prompts", disable=not progress) as bar:  # fmt: skip
                for start in range(0, len(todo), config.batch_size):
                    batch = todo[start : start + config.batch_size]
                    images = [Image.open(io.BytesIO(folder.image_bytes(line.row))).convert("RGB") for line in batch]
                    prompts = [(image, line.row["prompt"]) for image, line in zip(images, batch, strict=True)]
                    seeds = [prompt_seed(config, round_k, line.row["id"]) for line in batch]
                    answers = serving.sample(served, prompts, config.samples, settings, seeds=seeds)
                    store.put_many([(line.row["id"], line.row["id"], "ok", {"responses": texts})
                                    for line, texts in zip(batch, answers, strict=True)])  # fmt: skip
                    bar.update(len(batch))
                    if after_batch is not None:
                        after_batch(start + len(batch))
        return write_output(folder, out_dir, store, rows, invalid, round_k, settings.to_dict())


def write_output(folder, out_dir: Path, store: Store, rows: list, invalid: list[dict], round_k: int,
                 settings: dict) -> dict:  # fmt: skip
    """The release layout of every answered prompt, and the prompts that could not be asked (with reasons)."""
    names = None
    with (
        LayoutWriter(out_dir, OUTPUT_JSONL, input_dir=folder.root) as writer,
        JsonlWriter(out_dir / STAGE_DIR / "failures.jsonl") as failures,
    ):
        for entry in invalid:
            failures.write(entry)
        for line in rows:
            responses = store.result(line.row["id"]).data["responses"]
            names = names or sample_names(round_k, len(responses))
            source = {k: v for k, v in folder.row(line.offset).items() if k not in DROPPED_KEYS}
            completions = [
                {"model": n, "response": r, "generation": settings} for n, r in zip(names, responses, strict=True)
            ]
            writer.add({**source, "models": names, "completions": completions}, folder.image_bytes(source))
    report = {"prompts": len(rows) + len(invalid), "answered": len(rows), "invalid": len(invalid)}
    write_json(out_dir / STAGE_DIR / "report.json", report)
    if not rows:
        raise UserError(f"prompts {folder.root}: no usable prompt (see {out_dir / STAGE_DIR / 'failures.jsonl'})")
    return report


def openai_pool(config: RoundsConfig, round_k: int, served_name: str) -> dict:
    """``decode``'s pool for a round on a vLLM server: n members, each the policy by its served name (the base, or
    the adapter registered with ``--lora-modules``), so each sample has its own member seed."""
    generation = config.to_dict()["generation"]
    member = {
        "kind": "openai",
        "model": served_name,
        "base_url": config.engine_base_url,
        "concurrency": 64,
        "generation": {k: generation[k] for k in ("max_new_tokens", "temperature", "top_p")},
    }
    if config.engine_api_key_env:
        member["api_key_env"] = config.engine_api_key_env
    return {"k": config.samples, "seed": config.generation.seed + round_k,
            "members": [{"name": name, **member} for name in sample_names(round_k, config.samples)]}  # fmt: skip


def generate_openai(config: RoundsConfig, round_k: int, served_name: str, out_dir: Path, progress: bool) -> dict:
    """Sample the round through the pipeline's ``decode`` (its ledger resumes per answer)."""
    import yaml

    from vlfeedback_kit.builders.pipeline.decode import decode
    from vlfeedback_kit.files import write_text

    pool = out_dir / STAGE_DIR / "pool.yaml"
    write_text(pool, yaml.safe_dump(openai_pool(config, round_k, served_name), sort_keys=False))
    report = decode(config.prompts, out_dir, pool, progress=progress)
    if not report["complete"] or not report["ok"]:
        raise UserError(
            f"round {round_k}: generation left {report['pending']} prompts pending and {report['failed']} failed "
            f"(see {out_dir}/decode/failures.jsonl); re-run to continue"
        )
    return {"prompts": report["rows"], "answered": report["ok"], "invalid": report["invalid"]}
