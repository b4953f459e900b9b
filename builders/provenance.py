"""The ``judgements`` config's rows: the judge record and generation settings a pipeline row carries, typed.

A row of ``vlfeedback annotate`` has ``judge`` (model, template hash, outcome, attempts, permutation, raw reply,
usage, cost, content key) and ``completions[k].generation`` (the pool member's settings); the original release has
neither, and then there is no ``judgements`` row.
"""

from __future__ import annotations

from vlfeedback_kit.builders.features import GENERATION, JUDGEMENT_FEATURES

_JUDGE_FIELDS = tuple(JUDGEMENT_FEATURES["judge"])


def judgement_of(row: dict) -> dict | None:
    """The ``judgements`` row of an input row (None when it holds no judge record)."""
    judge = row.get("judge")
    if not isinstance(judge, dict):
        return None
    record = {name: judge.get(name) for name in _JUDGE_FIELDS}
    usage = judge.get("usage") if isinstance(judge.get("usage"), dict) else {}
    record["usage"] = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
    }
    completions = [
        {"model": c.get("model"), "generation": _generation(c.get("generation"))}
        for c in row.get("completions") or []
        if isinstance(c, dict)
    ]
    return {"id": row.get("id"), "judge": record, "completions": completions}


def _generation(settings: object) -> dict | None:
    if not isinstance(settings, dict):
        return None
    return {name: settings.get(name) for name in GENERATION}
