"""MME: yes/no questions in 14 subtasks, scored exactly as the official ``eval_tool/calculation.py``.

Data: the raw release (SPLIT subtasks with ``images/`` + ``questions_answers_YN/``, FLAT ones with image and
``.txt`` side by side, optionally under ``MME_Benchmark_release_version/MME_Benchmark/``) or the Hub parquet copy
(``question_id, image, question, answer, category``). Both give the same items, with ids
``<subtask>/<image_name>#<k>`` (k = 0 for a ``.txt``'s first line, 1 for its second).

The official output layout (what ``eval score mme`` reads and what we write beside our responses) is a folder of
``<subtask>.txt`` files, lines ``image_name<TAB>question<TAB>Yes|No<TAB>response``, the two questions of an image
on adjacent lines, responses flattened to one line without tabs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item, image_bytes_of, read_parquet_rows

PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION: tuple[str, ...] = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS: tuple[str, ...] = PERCEPTION + COGNITION
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
NESTED: tuple[str, ...] = (
    "MME_Benchmark_release_version/MME_Benchmark", "MME_Benchmark_release_version", "MME_Benchmark",
)  # fmt: skip
"""Extra folder levels the release zips may add above the subtask folders."""


@dataclass(frozen=True)
class Answered:
    """One line of the official layout: a question, its ground truth and the model's response."""

    subtask: str
    image: str
    question: str
    truth: str
    response: str


def parse_official(response: str) -> str:
    """The official label of a response: ``yes``, ``no`` or ``other`` (always wrong).

    ``pred = response.lower()``; an exact "yes"/"no" is the label, else the first 4 characters decide ("yes" in
    them → yes, else "no" in them → no). Nothing is stripped: ``"  yes"`` is other, ``"Not sure"`` is no."""
    pred = response.lower()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def flatten(response: str) -> str:
    """A response as one line without tabs (the official layout's requirement)."""
    return " ".join(response.replace("\t", " ").splitlines())


def subtask_scores(answered: Sequence[Answered]) -> dict:
    """acc, acc+, score (acc·100 + acc+·100) and the count of "other" labels of one subtask's lines, which come
    in adjacent pairs per image (as the official chunking requires)."""
    if len(answered) % 2:
        raise UserError(f"MME {answered[0].subtask}: {len(answered)} lines; every image needs its two questions")
    correct = [parse_official(line.response) == line.truth.lower() for line in answered]
    for line in answered:
        if line.truth.lower() not in ("yes", "no"):
            raise UserError(f"MME {line.subtask} {line.image}: ground truth {line.truth!r} is not Yes or No")
    pairs = [correct[i] and correct[i + 1] for i in range(0, len(correct), 2)]
    acc = sum(correct) / len(correct)
    acc_plus = sum(pairs) / len(pairs)
    other = sum(parse_official(line.response) == "other" for line in answered)
    return {"acc": acc * 100, "acc_plus": acc_plus * 100, "score": acc * 100 + acc_plus * 100,
            "questions": len(answered), "other": other}  # fmt: skip


def score(answered: Iterable[Answered]) -> dict:
    """``{"perception", "cognition", "subtasks", "other", "format_compliance", ...}`` over the official layout's
    lines; a missing subtask is listed in ``missing_subtasks`` (its group total then covers fewer subtasks)."""
    by_subtask: dict[str, list[Answered]] = {}
    for line in answered:
        if line.subtask not in SUBTASKS:
            raise UserError(f"MME: unknown subtask {line.subtask!r} (known: {', '.join(SUBTASKS)})")
        by_subtask.setdefault(line.subtask, []).append(line)
    detail = {name: subtask_scores(lines) for name, lines in by_subtask.items()}
    questions = sum(d["questions"] for d in detail.values())
    other = sum(d["other"] for d in detail.values())
    return {
        "perception": sum(detail[name]["score"] for name in PERCEPTION if name in detail),
        "cognition": sum(detail[name]["score"] for name in COGNITION if name in detail),
        "subtasks": {name: detail[name]["score"] for name in SUBTASKS if name in detail},
        "other": other,
        "questions": questions,
        "format_compliance": 1 - other / questions if questions else None,
        "detail": {name: detail[name] for name in SUBTASKS if name in detail},
        "missing_subtasks": [name for name in SUBTASKS if name not in detail],
        "scorer": "official eval_tool/calculation.py rule",
    }


# --- data ------------------------------------------------------------------------------------------------------


def _root(path: Path) -> Path:
    for nested in NESTED:
        if (path / nested).is_dir() and any((path / nested / name).is_dir() for name in SUBTASKS):
            return path / nested
    return path


def _read_pairs(txt: Path) -> list[tuple[str, str]]:
    lines = [line for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != 2 or fields[1].strip() not in ("Yes", "No"):
            raise UserError(f"{txt}:{number}: expected `question<TAB>Yes|No`, got {line[:80]!r}")
        pairs.append((fields[0], fields[1].strip()))
    if len(pairs) != 2:
        raise UserError(f"{txt}: {len(pairs)} questions; an MME image has exactly 2")
    return pairs


def load_raw(path: Path) -> list[Item]:
    """Items of the raw release folder (SPLIT and FLAT subtasks, either nesting)."""
    root = _root(path)
    items: list[Item] = []
    for subtask in SUBTASKS:
        folder = root / subtask
        if not folder.is_dir():
            continue
        split = (folder / "images").is_dir()
        texts = folder / "questions_answers_YN" if split else folder
        image_dir = folder / "images" if split else folder
        for txt in sorted(texts.glob("*.txt")):
            candidates = [image_dir / (txt.stem + suffix) for suffix in IMAGE_SUFFIXES]
            image = next((path for path in candidates if path.is_file()), None)
            if image is None:
                raise UserError(f"{txt}: no image {txt.stem}.jpg/.png in {image_dir}")
            for k, (question, truth) in enumerate(_read_pairs(txt)):
                items.append(Item(f"{subtask}/{image.name}#{k}", question, truth, image_path=str(image),
                                  meta={"subtask": subtask, "image_name": image.name}))  # fmt: skip
    if not items:
        raise UserError(f"{path}: no MME subtask folders ({', '.join(SUBTASKS[:3])}, …) found")
    return items


def load_parquet(path: Path) -> list[Item]:
    """Items of the Hub parquet copy (``question_id`` = ``<subtask>/<image>``, shared by an image's 2 questions)."""
    seen: dict[str, int] = {}
    items = []
    for number, row in enumerate(read_parquet_rows(path)):
        missing = [c for c in ("question_id", "question", "answer", "category") if c not in row]
        if missing:
            raise UserError(f"{path}: row {number} lacks {', '.join(missing)}; expected the lmms-lab/MME columns")
        subtask, image_name = row["category"], row["question_id"].split("/")[-1]
        k = seen.get(row["question_id"], 0)
        seen[row["question_id"]] = k + 1
        items.append(Item(f"{subtask}/{image_name}#{k}", row["question"], row["answer"],
                          image_bytes=image_bytes_of(row.get("image")),
                          meta={"subtask": subtask, "image_name": image_name}))  # fmt: skip
    order = {name: i for i, name in enumerate(SUBTASKS)}
    return sorted(items, key=lambda item: (order.get(item.meta["subtask"], 99), item.id))


def load(path: Path) -> list[Item]:
    """MME items from a raw release folder or a parquet file / folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--data mme={path}: no such file or folder")
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        return load_parquet(path)
    return load_raw(path)


# --- the official output layout ---------------------------------------------------------------------------------


def answered_of(items: Sequence[Item], responses: dict[str, str]) -> list[Answered]:
    """The official layout's lines for items with responses (flattened), pairs adjacent."""
    return [Answered(item.meta["subtask"], item.meta["image_name"], item.question, item.answer or "",
                     flatten(responses[item.id])) for item in items if item.id in responses]  # fmt: skip


def write_official(folder: Path, answered: Sequence[Answered]) -> list[Path]:
    """Write ``<subtask>.txt`` files the official ``calculation.py`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for subtask in SUBTASKS:
        lines = [a for a in answered if a.subtask == subtask]
        if lines:
            path = folder / f"{subtask}.txt"
            path.write_text("".join(f"{a.image}\t{a.question}\t{a.truth}\t{flatten(a.response)}\n" for a in lines),
                            encoding="utf-8")  # fmt: skip
            paths.append(path)
    return paths


def read_official(folder: Path) -> list[Answered]:
    """Lines of an official-layout folder (ours, lmms-eval's or VLMEvalKit's export), pairs checked adjacent."""
    folder = Path(folder)
    files = [folder / f"{name}.txt" for name in SUBTASKS if (folder / f"{name}.txt").is_file()]
    if not files:
        raise UserError(f"{folder}: no <subtask>.txt files of the MME layout (e.g. existence.txt)")
    answered = []
    for path in files:
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for number, line in enumerate(lines, start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise UserError(
                    f"{path}:{number}: {len(fields)} tab-separated fields, the layout has 4 "
                    "(image, question, Yes|No, response); flatten tabs and newlines in the response"
                )
            answered.append(Answered(path.stem, fields[0], fields[1], fields[2], fields[3]))
        own = [a for a in answered if a.subtask == path.stem]
        for i in range(0, len(own) - 1, 2):
            if own[i].image != own[i + 1].image:
                raise UserError(
                    f"{path}:{i + 1}: lines {i + 1} and {i + 2} are about {own[i].image} and "
                    f"{own[i + 1].image}; the two questions of an image must be adjacent"
                )
    return answered
