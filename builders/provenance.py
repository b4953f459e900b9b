"""The ``judgements`` config's rows: the judge record and generation settings a pipeline row carries, typed.

A row of ``vlfeedback annotate`` has ``judge`` (model, template hash, outcome, attempts, permutation, raw reply,
usage, cost, content key) and ``completions[k].generation`` (the pool member's settings); the original release has
neither, and then there is no ``judgements`` row.

What a build records names local folders, never locates them (it is published): a pool member's local model or
adapter is kept by its folder name (:func:`named`), so no absolute path of this machine reaches the Parquet,
``judge.json`` or ``build_report.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlfeedback_kit.builders.features import GENERATION, JUDGEMENT_FEATURES
from vlfeedback_kit.files import folder_name

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
    record = {name: settings.get(name) for name in GENERATION}
    return record | {key: local_name(record[key]) for key in ("model", "adapter")}


def is_local_path(value: object) -> bool:
    """Whether a recorded model, adapter or source names a folder of this machine: an absolute, home (``~``) or
    dot-relative path (a relative ``runs/x`` locates nothing and is kept). A Hub id or an API model name is not."""
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "./", "../")))


def local_name(value: object) -> object:
    """``value`` with a local folder replaced by its folder name; a Hub id, an API model name or None unchanged."""
    return folder_name(str(Path(value).expanduser())) if is_local_path(value) else value


def named(value: object) -> object:
    """How a published record keeps a model or adapter: a local folder as ``{"name": <folder name>, "local": true}``
    (the form ``run_info.json`` uses), anything else as it is."""
    return {"name": local_name(value), "local": True} if is_local_path(value) else value


def unlocated_judge(judge: dict) -> dict:
    """A pipeline's ``judge.json`` as a build publishes it: each pool member's local ``model``/``adapter`` named
    (:func:`named`), and any other absolute path in it replaced by its folder name."""
    pool = [
        member | {key: named(member[key]) for key in ("model", "adapter") if key in member}
        if isinstance(member, dict)
        else member
        for member in judge.get("pool") or []
    ]
    return _unlocated(judge | ({"pool": pool} if "pool" in judge else {}))


def _unlocated(value: object) -> object:
    if isinstance(value, dict):
        return {key: _unlocated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unlocated(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        return folder_name(value)
    return value
