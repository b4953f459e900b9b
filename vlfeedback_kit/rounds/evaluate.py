"""Stage 5 of a round: judged win rates on the held-out prompts — round k vs round k−1 and vs the base.

Every policy answers the held-out prompts greedily once (``eval/answers-<label>.json``, kept: a policy is asked only
once across rounds); each comparison is the eval folder's win-rate benchmark (``eval.scoring.score_judged``: the
kit's pairwise template, both orders, swap-consistent verdicts, a bootstrap CI, the judge cache that makes a re-run
free), with the length-controlled win rate (style control) beside the raw one where the eval folder provides it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from vlfeedback_kit.files import write_json
from vlfeedback_kit.rounds.config import RoundsConfig

BASE_LABEL = "base"


def heldout_items(config: RoundsConfig) -> list:
    """The held-out prompts as eval items (id, prompt, image bytes)."""
    from vlfeedback_kit.builders.pipeline.layout import open_input
    from vlfeedback_kit.errors import UserError
    from vlfeedback_kit.eval.items import Item
    from vlfeedback_kit.rounds.generate import read_prompts

    with open_input(config.heldout, "heldout") as folder:
        usable, _ = read_prompts(folder)
    items = [Item(str(line.row["id"]), line.row["prompt"], image_bytes=image) for line, image in usable]
    if not items:
        raise UserError(f"heldout {config.heldout}: no usable held-out prompt (id, prompt and image each)")
    return items


def content_keys(folder_path: Path, flag: str) -> dict[str, str]:
    """Prompt + image digest → id of every row of a release-layout folder (images read, not decoded)."""
    import hashlib

    from vlfeedback_kit.builders.pipeline.layout import open_input

    keys = {}
    with open_input(folder_path, flag) as folder:
        for line in folder.lines():
            if line.row is not None and isinstance(line.row.get("prompt"), str):
                digest = hashlib.sha256(line.row["prompt"].encode() + b"\0" + (folder.image_bytes(line.row) or b""))
                keys[digest.hexdigest()] = str(line.row["id"])
    return keys


def check_held_out(config: RoundsConfig) -> None:
    """Refuse held-out prompts that are also training prompts (same prompt and image): a win rate on prompts a
    round trained on is not held-out."""
    from vlfeedback_kit.errors import UserError

    trained = content_keys(config.prompts, "prompts")
    shared = [row_id for key, row_id in content_keys(config.heldout, "heldout").items() if key in trained]
    if shared:
        raise UserError(f"heldout {config.heldout}: {len(shared)} prompts (first: {shared[0]}) are also in prompts "
                        "(same question and image); hold out prompts no round trains on")  # fmt: skip


def answers_of(config: RoundsConfig, items: list, label: str, adapter: str | None, folder: Path) -> dict[str, str]:
    """A policy's greedy answers to the held-out prompts (read back when this label was answered before)."""
    from PIL import Image

    from vlfeedback_kit import serving

    path = folder / f"answers-{label}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    served = serving.load(config.base_model, adapter, adapter_revision=config.start_adapter_revision
                          if adapter == config.start_adapter else None, dtype=config.dtype)  # fmt: skip
    settings = serving.GenerationSettings(max_new_tokens=config.eval.max_new_tokens
                                          or config.generation.max_new_tokens)  # fmt: skip
    answers: dict[str, str] = {}
    for start in range(0, len(items), config.batch_size):
        batch = items[start : start + config.batch_size]
        prompts = [(Image.open(io.BytesIO(item.image_data())).convert("RGB"), item.question) for item in batch]
        answers.update(zip((i.id for i in batch), serving.generate(served, prompts, settings=settings), strict=True))
    write_json(path, answers)
    return answers


def judge_config(config: RoundsConfig):
    """The eval judge: the rounds' judge endpoint and model."""
    from vlfeedback_kit.eval.judging import JudgeConfig

    judge = config.judge
    urls = judge.base_url if isinstance(judge.base_url, str) else tuple(judge.base_url)
    return JudgeConfig(model=judge.model, base_url=urls, api_key_env=judge.api_key_env,
                       concurrency=judge.concurrency, prices=Path(judge.prices) if judge.prices else None)  # fmt: skip


def compare(config: RoundsConfig, items: list, answers: dict[str, dict[str, str]], model: str, other: str,
            folder: Path, progress: bool = True) -> dict:  # fmt: skip
    """The judged win rate of ``model`` over ``other`` (both orders), with its bootstrap CI; the judge's replies
    are cached in ``folder`` so a re-run pays for nothing twice."""
    from vlfeedback_kit.errors import UserError
    from vlfeedback_kit.eval.scoring import incomplete_line, score_judged

    result = score_judged("winrate", items, answers[model], folder, judge_config(config), other=answers[other],
                          labels=(model, other), progress=progress)  # fmt: skip
    line = incomplete_line(result, f"win rate {model} vs {other}")
    if line:
        raise UserError(line)
    return {
        key: result.get(key)
        for key in ("win_rate", "win_rate_ci", "wins", "ties", "losses", "n", "unparsed", "length_controlled")
    } | {"model": model, "other": other}


def mean_words(answers: dict[str, str]) -> float:
    """Mean answer length in words (DPO rounds make answers longer: the report shows it beside each win rate)."""
    return sum(len(a.split()) for a in answers.values()) / max(len(answers), 1)


def benchmark_scores(config: RoundsConfig, label: str, adapter: str | None, folder: Path, progress: bool) -> dict:
    """The listed benchmarks of one policy through ``vlfeedback eval run``'s own function (its response logs and
    judge cache resume a killed run): ``{benchmark: {key: number}}`` of each benchmark's top-level numbers."""
    from vlfeedback_kit.errors import UserError
    from vlfeedback_kit.eval.runner import RunOptions, run

    benchmarks = config.eval.benchmarks
    summary = run(RunOptions(benchmarks=list(benchmarks), data=dict(benchmarks), out=folder, model=config.base_model,
                             adapter=adapter, label=label, judge=judge_config(config), batch_size=config.batch_size,
                             max_new_tokens=config.eval.max_new_tokens, progress=progress))  # fmt: skip
    if summary["incomplete"]:
        raise UserError(f"{label}: {summary['incomplete'][0]}")
    return {name: {key: value for key, value in scores[label].items()
                   if isinstance(value, int | float) and not isinstance(value, bool)}
            for name, scores in summary["scores"].items()}  # fmt: skip
