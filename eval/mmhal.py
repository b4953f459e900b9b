"""MMHal-Bench: 96 open questions judged from text by a GPT-4-class judge, scored exactly as the official
``eval_gpt4.py`` (LLaVA-RLHF).

Data: ``response_template.json`` (a list of records: question_type, question_topic, image_id, image_src,
image_content, question, gt_answer, model_answer) and the images (``test_data/`` or ``images/``, by the file name
of ``image_src``). Item ids are the record's index (``"0"`` … ``"95"``), because the official per-type means use
``index % 8``. The official output layout is the same file with ``model_answer`` filled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item
from vlfeedback_kit.files import write_json

TEMPLATE_FILE = Path(__file__).parent / "judge_templates" / "mmhal.txt"
QUESTION_TYPES: tuple[str, ...] = (
    "attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other",
)  # fmt: skip
"""Type of record i is ``QUESTION_TYPES[i % 8]`` (the official script's "assuming order of 96 questions")."""
FIELDS: tuple[str, ...] = ("image_content", "question", "gt_answer")


def template() -> str:
    """The official judge prompt with its four ``{}`` slots."""
    return TEMPLATE_FILE.read_text(encoding="utf-8")


def judge_prompt(record: dict, response: str) -> str:
    """The official prompt for one record: image contents joined by ", ", question, standard answer, response."""
    return template().format(", ".join(record["image_content"]), record["question"], record["gt_answer"], response)


def judge_request(prompt: str) -> dict:
    """The official call: the prompt as one user message, temperature 0 (the model is added by the judge)."""
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0.0}


def parse_rating(reply: str) -> int | None:
    """The official rule: the ratings s in 0..6 with ``f"rating: {s}"`` in the lower-cased reply; exactly one
    found is the score, none or several is None (which the official script scores 0)."""
    found = [s for s in range(7) if f"rating: {s}" in reply.lower()]
    return found[0] if len(found) == 1 else None


def score(ratings: Sequence[int | None], question_types: Sequence[str] | None = None) -> dict:
    """``{"average_score", "hallucination_rate", "per_type", "unparsed"}`` of the records' parsed ratings in
    template order (None = unparsed, scored 0 and counted). ``question_types`` (the records' own field) are
    checked against the ``i % 8`` order; mismatches are counted, not fatal."""
    if not ratings:
        raise UserError("MMHal-Bench: no judged records to score")
    scores = [0 if r is None else r for r in ratings]
    hallucination = [1 if s < 3 else 0 for s in scores]
    buckets: list[list[int]] = [[] for _ in QUESTION_TYPES]
    for i, s in enumerate(scores):
        buckets[i % 8].append(s)
    mismatched = 0
    if question_types is not None:
        mismatched = sum(1 for i, t in enumerate(question_types) if t and t != QUESTION_TYPES[i % 8])
    return {
        "average_score": sum(scores) / len(scores),
        "hallucination_rate": sum(hallucination) / len(hallucination),
        "per_type": {name: sum(b) / len(b) for name, b in zip(QUESTION_TYPES, buckets) if b},
        "unparsed": sum(r is None for r in ratings),
        "records": len(scores),
        "type_order_mismatches": mismatched,
        "scorer": "official eval_gpt4.py rule",
    }


def official_lines(result: dict) -> list[str]:
    """What the official script prints for these scores (2 decimals; per-type ``str(round(x, 2))``)."""
    return [
        "Average score: {:.2f}".format(result["average_score"]),
        "Hallucination rate: {:.2f}".format(result["hallucination_rate"]),
        "Average score for each question type: " + ",".join(str(round(v, 2)) for v in result["per_type"].values()),
    ]


# --- data -----------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    """The records of a ``response_template.json`` (or the same list with ``model_answer`` filled)."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MMHal-Bench response_template.json ({err})") from err
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of records, as response_template.json")
    for index, record in enumerate(records):
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise UserError(f"{path}: record {index} lacks {', '.join(missing)}")
    return records


def _image(root: Path, record: dict) -> str | None:
    name = Path(str(record.get("image_path") or record.get("image_src") or "")).name
    for folder in (root / "test_data", root / "images", root):
        if name and (folder / name).is_file():
            return str(folder / name)
    return None


def load(path: Path) -> list[Item]:
    """Items of a folder holding ``response_template.json`` and the images (or the JSON file itself)."""
    path = Path(path)
    file = path / "response_template.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"--data mmhal={path}: no response_template.json")
    root = file.parent
    items = []
    for index, record in enumerate(read_records(file)):
        image = _image(root, record)
        items.append(Item(str(index), record["question"], record["gt_answer"], image_path=image,
                          meta={"record": {k: v for k, v in record.items() if k != "model_answer"}}))  # fmt: skip
    return items


def write_official(path: Path, items: Sequence[Item], responses: dict[str, str]) -> None:
    """The template with ``model_answer`` filled, in record order (what ``eval_gpt4.py --response`` reads)."""
    records = [{**item.meta["record"], "model_answer": responses.get(item.id, "")} for item in items]
    write_json(path, records)


def read_official(path: Path) -> tuple[list[Item], dict[str, str]]:
    """Items and responses of a filled template (ours, or another tool's)."""
    items, responses = [], {}
    for index, record in enumerate(read_records(Path(path))):
        if not isinstance(record.get("model_answer"), str):
            raise UserError(f"{path}: record {index} has no model_answer; fill it with the model's response")
        items.append(Item(str(index), record["question"], record["gt_answer"], meta={"record": record}))
        responses[str(index)] = record["model_answer"]
    return items, responses
