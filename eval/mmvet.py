"""MM-Vet: 218 open questions over 6 capabilities, graded by an LLM with the official few-shot prompt and scored
exactly as the official ``mm-vet_evaluator.py``.

Data: ``mm-vet.json`` (a dict ``v1_0`` … → imagename, capability list, question, answer) and ``images/``, or the
Hub parquet copy (``capability`` one comma-joined string). The official output layout is a JSON dict
``{"v1_0": "<response>", …}``.

Grading one item (one run): the query at temperature 0, ``max_tokens=3``; a reply parses when
``float(reply.split(" ")[0].strip())`` lies in [0, 1]; otherwise it is re-asked with the official suffix, the
temperature rising by 0.5 after each re-ask, and after 5 unparsed replies the score is 0.0 and counted as
unparsed. (The official script makes a sixth call whose reply it never reads; we skip that call — same score.)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item, image_bytes_of, read_parquet_rows
from vlfeedback_kit.files import write_json

TEMPLATE_FILE = Path(__file__).parent / "judge_templates" / "mmvet.txt"
REASK_SUFFIX = "\nPredict the correctness of the answer (digit): "
MAX_TOKENS = 3
MAX_REPLIES = 5
"""Unparsed replies after which an item's score is 0.0 (the official ``try_time > 5``)."""


def prompt() -> str:
    """The official few-shot prompt (instruction and the 7-row table)."""
    return TEMPLATE_FILE.read_text(encoding="utf-8")


def query(question: str, answer: str, prediction: str) -> str:
    """The official query: prompt, newline, ``question | answer (<AND>/<OR> spaced) | prediction | ``."""
    spaced = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt() + "\n" + " | ".join([question, spaced, prediction, ""])


def parse_score(reply: str | None) -> float | None:
    """``float(reply.split(" ")[0].strip())`` when it lies in [0, 1], else None (a leading space fails)."""
    try:
        value = float((reply or "").split(" ")[0].strip())
    except ValueError:
        return None
    return None if value > 1.0 or value < 0.0 else value


def next_request(base_query: str, replies: Sequence[str | None]) -> dict | None:
    """The next call of one grading given the replies so far, or None when it is settled."""
    if replies and (parse_score(replies[-1]) is not None or len(replies) >= MAX_REPLIES):
        return None
    if not replies:
        return {"messages": [{"role": "user", "content": base_query}], "max_tokens": MAX_TOKENS, "temperature": 0.0}
    temperature = 0.5 * (len(replies) - 1)  # the first re-ask keeps 0.0; each later one adds 0.5
    return {"messages": [{"role": "user", "content": base_query + REASK_SUFFIX}], "max_tokens": MAX_TOKENS,
            "temperature": temperature}  # fmt: skip


def grade(replies: Sequence[str | None]) -> tuple[float, bool]:
    """(score, unparsed) of a settled grading: the last reply's value, or 0.0 after 5 unparsed replies."""
    value = parse_score(replies[-1]) if replies else None
    return (0.0, True) if value is None else (value, False)


def capability_set(value: object) -> frozenset[str]:
    """A capability list, or the Hub copy's comma-joined string, as a set."""
    if isinstance(value, str):
        return frozenset(c.strip() for c in value.split(",") if c.strip())
    return frozenset(value or ())


def integration_name(caps: frozenset[str]) -> str:
    """An exact capability set's name, independent of order (the official name depends on the hash seed)."""
    return "_".join(sorted(caps))


def _round(value: float) -> float:
    return float(round(value, 1))


def score(capabilities: Mapping[str, frozenset[str]], runs: Sequence[Mapping[str, float]], unparsed: int = 0) -> dict:
    """Per-capability and per-integration scores (mean over runs, rounded to 1 decimal), the total, the
    population std of run totals and the run totals, as the official ``export_result``."""
    if not runs or not capabilities:
        raise UserError("MM-Vet: no graded items to score")
    ids = list(capabilities)
    for r, run in enumerate(runs):
        missing = [i for i in ids if i not in run]
        if missing:
            raise UserError(f"MM-Vet: run {r + 1} lacks grades for {', '.join(missing[:5])}; judge them first")
    counts = Counter(c for caps in capabilities.values() for c in caps)
    sets = Counter(capabilities.values())
    totals = [sum(run[i] for i in ids) / len(ids) * 100 for run in runs]
    per_cap = {c: [sum(run[i] for i in ids if c in capabilities[i]) / n * 100 for run in runs]
               for c, n in counts.most_common()}  # fmt: skip
    per_set = {integration_name(s): [sum(run[i] for i in ids if capabilities[i] == s) / n * 100 for run in runs]
               for s, n in sets.most_common()}  # fmt: skip
    mean_total = sum(totals) / len(totals)
    std = math.sqrt(sum((t - mean_total) ** 2 for t in totals) / len(totals))
    return {
        "total": _round(mean_total),
        "std": _round(std),
        "runs": [_round(t) for t in totals],
        "capabilities": {c: _round(sum(v) / len(v)) for c, v in per_cap.items()},
        "integrations": {name: _round(sum(v) / len(v)) for name, v in per_set.items()},
        "items": len(ids),
        "num_runs": len(runs),
        "unparsed": unparsed,
        "scorer": "official mm-vet_evaluator.py rule",
    }


# --- data -----------------------------------------------------------------------------------------------------


def load(path: Path) -> list[Item]:
    """Items of a folder with ``mm-vet.json`` + ``images/`` (or the JSON file), or of the Hub parquet copy."""
    path = Path(path)
    if path.suffix == ".parquet" or (path.is_dir() and not (path / "mm-vet.json").is_file()
                                     and any(path.rglob("*.parquet"))):  # fmt: skip
        items = []
        for number, row in enumerate(read_parquet_rows(path)):
            if "question_id" not in row or "answer" not in row:
                raise UserError(f"{path}: row {number} lacks question_id/answer; expected the lmms-lab/MMVet columns")
            items.append(Item(str(row["question_id"]), row["question"], row["answer"],
                              image_bytes=image_bytes_of(row.get("image")),
                              meta={"capability": sorted(capability_set(row.get("capability")))}))  # fmt: skip
        return items
    file = path / "mm-vet.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--data mmvet={path}: not a readable mm-vet.json ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a dict keyed v1_0, v1_1, … as the official mm-vet.json")
    items = []
    for key, value in data.items():
        missing = [f for f in ("question", "answer", "capability") if f not in value]
        if missing:
            raise UserError(f"{file}: {key} lacks {', '.join(missing)}")
        image = file.parent / "images" / str(value.get("imagename", ""))
        items.append(Item(key, value["question"], value["answer"], image_path=str(image) if image.is_file() else None,
                          meta={"capability": sorted(capability_set(value["capability"]))}))  # fmt: skip
    return items


def read_official(path: Path) -> dict[str, str]:
    """The official results dict ``{"v1_0": "<response>", …}``."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MM-Vet results JSON ({err})") from err
    if not isinstance(results, dict) or not all(isinstance(v, str) for v in results.values()):
        raise UserError(f'{path}: expected the official results dict {{"v1_0": "<response>", …}}')
    return results


def write_official(path: Path, responses: Mapping[str, str]) -> None:
    """The official results dict."""
    write_json(path, dict(responses))
