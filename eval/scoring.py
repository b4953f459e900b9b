"""From saved responses to ``judgements.jsonl`` and ``scores.json`` for one benchmark: the step that needs no model.

Each judged benchmark turns (item, response) into judge tasks with its official prompt and re-ask rule, settles
them through :mod:`vlfeedback_kit.eval.judging` (cached), writes every raw reply with its parsed value or the parse
failure, and scores with the benchmark's pure scorer. A benchmark with any grading left unsettled (a failed call,
``--max-cost``, a judge that stopped answering) gets no numbers: its ``scores.json`` says ``complete: false``, how
many items were judged and why the rest were not, and :func:`incomplete_line` says it in one line for the CLI
(which then exits 3).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval import mme, mmhal, mmvet, redteam, winrate
from vlfeedback_kit.eval.items import Item
from vlfeedback_kit.eval.judging import (
    CACHE_FILE,
    STOPPED_BY_COST,
    STOPPED_BY_JUDGE,
    JudgeConfig,
    Judgement,
    JudgeTask,
    judge,
)
from vlfeedback_kit.files import write_json, write_text

if TYPE_CHECKING:
    from vlfeedback_kit.builders.pipeline.cost import Budget

BENCHMARKS: tuple[str, ...] = ("mme", "mmhal", "mmvet", "redteam", "winrate")
JUDGED: frozenset[str] = frozenset({"mmhal", "mmvet", "redteam", "winrate"})
JUDGEMENTS = "judgements.jsonl"
SCORES = "scores.json"


def _single(request: dict, replies: list) -> dict | None:
    return None if replies else request


def _missing(items: Sequence[Item], responses: Mapping[str, str], benchmark: str) -> None:
    absent = [item.id for item in items if item.id not in responses]
    if absent:
        raise UserError(
            f"{benchmark}: {len(absent)} items have no response (first: {absent[0]}); generate them "
            "first (`vlfeedback eval run`) or pass the full responses file"
        )


def tasks_for(
    benchmark: str,
    items: Sequence[Item],
    responses: Mapping[str, str],
    runs: int = 1,
    other: Mapping[str, str] | None = None,
) -> list[JudgeTask]:
    """The judge tasks of a benchmark, with the official (or kit) prompt and re-ask rule."""
    tasks = []
    if benchmark == "mmhal":
        for item in items:
            prompt = mmhal.judge_prompt(item.meta["record"], responses[item.id])
            tasks.append(JudgeTask(item.id, 0, prompt, functools.partial(_single, mmhal.judge_request(prompt))))
    elif benchmark == "mmvet":
        for run in range(runs):
            for item in items:
                query = mmvet.query(item.question, item.answer or "", responses[item.id])
                tasks.append(JudgeTask(item.id, run, query, functools.partial(mmvet.next_request, query)))
    elif benchmark == "redteam":
        for item in items:
            prompt = redteam.judge_prompt(item.question, responses[item.id])
            request = {"messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "max_tokens": 300}
            image = item.image_data() if item.image_path or item.image_bytes else None
            tasks.append(JudgeTask(item.id, 0, prompt, functools.partial(_single, request), image))
    elif benchmark == "winrate":
        if other is None:
            raise UserError("winrate needs the base's responses too: run with --compare-base")
        for item in items:
            image = item.image_data() if item.image_path or item.image_bytes else None
            pairs = {"ab": (responses[item.id], other[item.id]), "ba": (other[item.id], responses[item.id])}
            for order, (a, b) in pairs.items():
                prompt = winrate.judge_prompt(item.question, a, b)
                request = {"messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "max_tokens": 300}
                tasks.append(JudgeTask(f"{item.id}:{order}", 0, prompt, functools.partial(_single, request), image))
    else:
        raise UserError(f"{benchmark} is not a judged benchmark")
    return tasks


def parsed_value(benchmark: str, judgement: Judgement) -> tuple[object, str | None]:
    """(parsed value, parse failure or None) of a settled judgement, by the benchmark's rule."""
    replies = judgement.replies
    if benchmark == "mmhal":
        rating = mmhal.parse_rating(replies[-1] or "")
        return rating, None if rating is not None else "no single `rating: N` (N in 0..6): the official rule scores 0"
    if benchmark == "mmvet":
        value, unparsed = mmvet.grade(replies)
        return (
            value,
            f"{len(replies)} replies without a score in [0, 1]: the official rule scores 0.0" if unparsed else None,
        )
    if benchmark == "redteam":
        rating, refusal = redteam.parse_reply(replies[-1])
        return {"rating": rating, "refusal": refusal}, None if rating is not None else "no single `Rating: N` (1-5)"
    verdict = winrate.parse_verdict(replies[-1])
    return verdict, None if verdict is not None else "no single `Verdict: A|B|tie`"


def score_judged(
    benchmark: str,
    items: Sequence[Item],
    responses: Mapping[str, str],
    folder: Path,
    config: JudgeConfig,
    runs: int = 1,
    other: Mapping[str, str] | None = None,
    labels: tuple[str, str] = ("silkie", "base"),
    progress: bool = True,
    cache_path: Path | None = None,
    budget: Budget | None = None,
) -> dict:
    """Judge (cached) and score one label's responses of a judged benchmark; writes judgements.jsonl and
    scores.json in ``folder`` and returns the scores (``budget``: the run's shared ``--max-cost``)."""
    _missing(items, responses, benchmark)
    if other is not None:
        _missing(items, other, benchmark)
    tasks = tasks_for(benchmark, items, responses, runs, other)
    folder.mkdir(parents=True, exist_ok=True)
    judgements, stats = judge(tasks, config, cache_path or folder / CACHE_FILE, benchmark, progress, budget)
    lines, values = [], {}
    for judgement in judgements:
        line = {"benchmark": benchmark, **judgement.to_dict()}
        if judgement.error is None:
            value, failure = parsed_value(benchmark, judgement)
            line.update(parsed=value, parse_failure=failure)
            values[(judgement.item_id, judgement.run)] = (value, failure)
        lines.append(line)
    write_text(folder / JUDGEMENTS, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    resolved = sorted({m for j in judgements for m in j.judge_models_resolved if m})
    head = {"benchmark": benchmark, **config.record(), "judge_models_resolved": resolved, "judge_run": stats}
    if len(resolved) > 1:  # an alias moved between runs: the cache, keyed by the requested name, mixes snapshots
        snapshots = ", ".join(resolved)
        head["judge_snapshot_warning"] = (
            f"replies come from {len(resolved)} judge snapshots ({snapshots}); pass "
            "one snapshot as --judge-model (a new name starts its own cache)"
        )
    unsettled = [j for j in judgements if j.error is not None]
    if unsettled:
        open_items = {_item_of(benchmark, j) for j in unsettled}
        result = {**head, "complete": False, "items": len(items), "items_judged": len(items) - len(open_items),
                  "failed": sum("failed" in (j.error or "") for j in unsettled), "not_judged": len(unsettled),
                  "first_error": unsettled[0].error, "stopped": stats["stopped"], "stopped_by": stats["stopped_by"],
                  "note": "no scores: re-run to judge the rest (settled replies are cached)"}  # fmt: skip
    else:
        answers = {item.id: (responses[item.id], other[item.id]) for item in items} if other is not None else None
        result = {**head, "complete": True, "failed": 0, **_score(benchmark, items, values, runs, labels, answers)}
    write_json(folder / SCORES, result)
    return result


def _item_of(benchmark: str, judgement: Judgement) -> str:
    """The item a grading is about (a win-rate grading is one order, ``<id>:ab`` or ``<id>:ba``, of an item)."""
    return judgement.item_id.rpartition(":")[0] if benchmark == "winrate" else judgement.item_id


def incomplete_line(result: dict, where: str) -> str | None:
    """One line for a judged benchmark left incomplete (None when it is complete, or a ``--dry-run``): where,
    how many items were judged, and why the rest were not, with what to do."""
    if result.get("complete", True) or (result.get("judge_run") or {}).get("dry_run"):
        return None
    head = f"{where}: {result['items_judged']} of {result['items']} items judged"
    if result.get("stopped_by") == STOPPED_BY_JUDGE:
        return f"{head}; the judge stopped: {result['stopped']}"
    if result.get("stopped_by") == STOPPED_BY_COST:
        return f"{head}; {result['stopped']}: raise --max-cost to judge the rest (judged replies are cached)"
    return (
        f"{head}; {result['not_judged']} gradings failed (first: {result['first_error']}); re-run the same command "
        "to retry them (judged replies are cached)"
    )


def _score(
    benchmark: str,
    items: Sequence[Item],
    values: dict,
    runs: int,
    labels: tuple[str, str],
    answers: Mapping[str, tuple[str, str]] | None = None,
) -> dict:
    if benchmark == "mmhal":
        ratings = [values[(item.id, 0)][0] for item in items]
        types = [item.meta["record"].get("question_type") for item in items]
        result = mmhal.score(ratings, types)
        return {**result, "official_output": mmhal.official_lines(result)}
    if benchmark == "mmvet":
        caps = {item.id: frozenset(item.meta["capability"]) for item in items}
        grades = [{item.id: values[(item.id, run)][0] for item in items} for run in range(runs)]
        unparsed = sum(1 for (_, _), (_, failure) in values.items() if failure)
        return mmvet.score(caps, grades, unparsed)
    if benchmark == "redteam":
        parsed = {item.id: (values[(item.id, 0)][0]["rating"], values[(item.id, 0)][0]["refusal"]) for item in items}
        return redteam.score(redteam.subtasks_of(items), parsed)
    verdicts = {item.id: (values[(f"{item.id}:ab", 0)][0], values[(f"{item.id}:ba", 0)][0]) for item in items}
    return winrate.score(verdicts, *labels, answers=answers)


def score_mme(items: Sequence[Item], responses: Mapping[str, str], folder: Path | None = None) -> dict:
    """MME scores of responses (no judge); with ``folder``, also the official layout and scores.json there."""
    _missing(items, responses, "mme")
    answered = mme.answered_of(items, responses)
    result = {"benchmark": "mme", "complete": True, **mme.score(answered)}
    if folder is not None:
        mme.write_official(folder / "official", answered)
        write_json(folder / SCORES, result)
    return result
