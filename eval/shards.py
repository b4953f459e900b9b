"""``eval run --shard I/N`` and ``eval assemble``: one evaluation split over machines, then merged.

    vlfeedback eval run ... --shard 0/2 --out evals/s0        # on one machine
    vlfeedback eval run ... --shard 1/2 --out evals/s1        # on another
    vlfeedback eval assemble evals/s0 evals/s1 --out evals/silkie

A shard generates and judges the items of its shard only (by a hash of the benchmark and the item id, so every
machine agrees). ``assemble`` checks the folders are the shards 0..N-1 of one run (the same options but ``--out``
and ``--shard``), copies their responses and judge ledgers into ``--out`` and scores every benchmark over all its
items, as one unsharded run would — from the merged ledgers, so a complete set of shards makes no judge call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.generation import BASE_LABEL, RESPONSES, ResponseLog, read_responses
from vlfeedback_kit.eval.items import Item
from vlfeedback_kit.eval.judging import CACHE_FILE, JudgeConfig
from vlfeedback_kit.eval.runner import RUN_FILE, load_items, score_labels
from vlfeedback_kit.eval.scoring import incomplete_line
from vlfeedback_kit.files import write_json

SHARD_FIELDS = ("out", "shard")
"""The options that differ between the shards of one run."""


def shard_items(benchmark: str, items: list[Item], shard: tuple[int, int]) -> list[Item]:
    """The items of ``shard`` (index, count): a function of the benchmark and the item id only."""
    from vlfeedback_kit.builders.pipeline.judge import shard_of

    index, count = shard
    if count == 1:
        return items
    return [i for i in items if shard_of(hashlib.sha256(f"{benchmark}/{i.id}".encode()).hexdigest(), count) == index]


def merge_hint(out: Path, shard: tuple[int, int]) -> str:
    """The line a shard's run ends with: this shard is done, and the ``eval assemble`` that merges every shard."""
    index, count = shard
    folders = " ".join(f"SHARD{i}" for i in range(count))
    return (
        f"eval shard {index}/{count} done in {out}; next, once every shard is done: vlfeedback eval assemble "
        f"{folders} --out DIR"
    )


def read_shards(folders: list[Path]) -> list[dict]:
    """The run.json of each shard folder, checked to be the shards 0..N-1 of one run."""
    runs = []
    for folder in folders:
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            raise UserError(f"{folder}: no {RUN_FILE}; run `vlfeedback eval run --shard I/N --out {folder}` first")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    shards = [tuple(run["options"].get("shard") or (0, 1)) for run in runs]
    count = shards[0][1]
    if sorted(shards) != [(i, count) for i in range(count)]:
        named = ", ".join(f"{folder}: {i}/{n}" for folder, (i, n) in zip(folders, shards, strict=True))
        raise UserError(f"eval assemble: give each shard 0..N-1 of one run once ({named})")
    first = {k: v for k, v in runs[0]["options"].items() if k not in SHARD_FIELDS}
    for folder, run in zip(folders[1:], runs[1:], strict=True):
        other = {k: v for k, v in run["options"].items() if k not in SHARD_FIELDS}
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise UserError(f"eval assemble: {folder} was run with other options ({', '.join(differ)})")
    return runs


def labels_of(folders: list[Path], benchmark: str) -> list[str]:
    """The labels with responses to a benchmark in any shard, the base last (win rate compares the first to it)."""
    found = {path.parent.parent.name for folder in folders for path in Path(folder).glob(f"*/{benchmark}/{RESPONSES}")}
    return sorted(found - {BASE_LABEL}) + ([BASE_LABEL] if BASE_LABEL in found else [])


def merge_benchmark(folders: list[Path], out: Path, benchmark: str, label: str) -> int:
    """Copy one label's responses and judge ledger of every shard into ``out``; returns the responses merged."""
    from vlfeedback_kit.builders.pipeline.store import Store

    target = out / label / benchmark
    log = ResponseLog(target / RESPONSES)
    try:
        for folder in folders:
            records = read_responses(Path(folder) / label / benchmark / RESPONSES)
            log.write([record for key, record in records.items() if key not in log.done])
        merged = len(log.done)
    finally:
        log.close()
    caches = [Path(folder) / label / benchmark / CACHE_FILE for folder in folders]
    if any(cache.is_file() for cache in caches):
        with Store(target / CACHE_FILE) as store:
            for cache in caches:
                if cache.is_file():
                    store.absorb(cache)
    return merged


def assemble(folders: list[Path], out: Path, judge: JudgeConfig | None, progress: bool = True) -> dict:
    """Merge the shard folders of one ``eval run`` into ``out`` and score every benchmark; returns the summary
    written to ``out/run.json`` (as an unsharded run's)."""
    folders = [Path(folder) for folder in folders]
    if any(folder.resolve() == Path(out).resolve() for folder in folders):
        raise UserError("eval assemble: --out must be a new folder, not one of the shards")
    runs = read_shards(folders)
    options = runs[0]["options"]
    summary: dict = {"options": {**options, "out": str(out), "shard": None, "shards": [f.name for f in folders]},
                     "model_loads": 0, "generated": {}, "scores": {}, "incomplete": []}  # fmt: skip
    for name in options["benchmarks"]:
        labels = labels_of(folders, name)
        summary["generated"][name] = sum(run["generated"].get(name, 0) for run in runs)
        for label in labels:
            merge_benchmark(folders, out, name, label)
        items = load_items(name, options["data"][name], options.get("limit"))
        scores = score_labels(name, items, out, labels, judge, options.get("runs", 1), progress)
        summary["scores"][name] = scores
        lines = [incomplete_line(result, f"{name} ({label})") for label, result in scores.items()]
        summary["incomplete"] += [line for line in lines if line]
    write_json(out / RUN_FILE, summary)
    return summary
