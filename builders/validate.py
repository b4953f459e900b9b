"""Turning one input row of the original release into a canonical ``raw`` row, or a named reason why not."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from vlfeedback_kit.builders.features import ASPECTS, source_of
from vlfeedback_kit.builders.ratings import parse_rating
from vlfeedback_kit.files import name_problem

REJECT_REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8; re-export the file as UTF-8",
    "invalid_json": "the line is not a JSON object; fix or remove the line",
    "missing_field": "a required field is absent; every row needs id, prompt, models and completions",
    "invalid_type": "a field has the wrong type; see the schema in docs/dataset.md (typed in builders/features.py)",
    "invalid_id": "ids must be non-empty, without '/' or '\\\\', and not start with '.'",
    "duplicate_id": "an earlier row has the same id; keep one row per instruction",
    "too_few_completions": "fewer than 2 completions: no preference pair can be formed",
    "models_mismatch": "`models` differs from the models of the completions; regenerate the row",
    "missing_image": "no image for this id; put it at merged_images/<id>.jpg (or in merged_images.zip)",
    "unsafe_path": "img_path or a merged_images.zip member name leads outside the release folder ('..', an absolute "
    "path or a symlink out) and is never read; put the image at merged_images/<id>.jpg",
    "unreadable_image": "the image bytes are not a readable image; re-extract or re-download it",
}
"""Every reason a row can be rejected for, with what to do about it (written into the report)."""


class Reject(Exception):
    """A row that cannot be kept: ``reason`` is a key of REJECT_REASONS, ``detail`` names the exact problem."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class RowStats:
    """What was repaired or nulled while canonicalising a row (nothing is changed silently)."""

    null_ratings: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ASPECTS, 0))


def check_image(data: bytes | None, mode: str = "header") -> str:
    """Raise Reject unless ``data`` is a readable image; returns its format. ``decode`` mode decodes every pixel."""
    if not data:
        raise Reject("unreadable_image", "empty image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or "unknown"
            if mode == "decode":
                image.load()
            elif image_format == "JPEG" and b"\xff\xd9" not in data[-1024:]:
                raise Reject("unreadable_image", "JPEG has no end-of-image marker (truncated file)")
    except UnidentifiedImageError as err:
        raise Reject("unreadable_image", f"not a recognised image format ({len(data)} bytes)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise Reject("unreadable_image", f"cannot decode image: {err}") from err
    return image_format


def _require(row: dict, key: str, kind: type, where: str = "") -> object:
    if key not in row or row[key] is None:
        raise Reject("missing_field", f"{where}{key!r} is missing")
    value = row[key]
    if not isinstance(value, kind):
        raise Reject("invalid_type", f"{where}{key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def check_id(row: object) -> str:
    """The row's id, validated (it names the image file, so it must be a safe file name)."""
    if not isinstance(row, dict):
        raise Reject("invalid_json", f"expected a JSON object, got {type(row).__name__}")
    row_id = _require(row, "id", str)
    problem = name_problem(row_id)
    if problem is not None:
        raise Reject("invalid_id", f"id {row_id!r} cannot name an image file: it {problem}")
    return row_id


def canonical_row(row: dict, image: bytes, image_name: str, stats: RowStats) -> dict:
    """The typed ``raw`` row for a validated input row (ratings parsed; unparseable ones become null)."""
    row_id = check_id(row)
    prompt = _require(row, "prompt", str)
    completions_in = _require(row, "completions", list)
    if len(completions_in) < 2:
        raise Reject("too_few_completions", f"{len(completions_in)} completion(s)")
    completions = []
    for k, completion in enumerate(completions_in):
        where = f"completions[{k}]."
        if not isinstance(completion, dict):
            raise Reject("invalid_type", f"completions[{k}] should be an object, got {type(completion).__name__}")
        model = _require(completion, "model", str, where)
        response = _require(completion, "response", str, where)
        annotations_in = _require(completion, "annotations", dict, where)
        annotations = {}
        for aspect in ASPECTS:
            judgement = _require(annotations_in, aspect, dict, f"{where}annotations.")
            if "Rating" not in judgement:
                raise Reject("missing_field", f"{where}annotations.{aspect}.'Rating' is missing")
            rationale = judgement.get("Rationale")
            if rationale is not None and not isinstance(rationale, str):
                raise Reject("invalid_type", f"{where}annotations.{aspect}.'Rationale' should be str")
            rating = parse_rating(judgement["Rating"])
            if rating is None:
                stats.null_ratings[aspect] += 1
            annotations[aspect] = {"Rating": rating, "Rationale": rationale}
        completions.append({"model": model, "response": response, "annotations": annotations})
    completion_models = [c["model"] for c in completions]
    models = row.get("models")
    if models is None:
        raise Reject("missing_field", "'models' is missing")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise Reject("invalid_type", "'models' should be a list of str")
    if models != completion_models:
        raise Reject("models_mismatch", f"models {models} vs completions' models {completion_models}")
    source = row.get("source")
    return {
        "id": row_id,
        "source": source if isinstance(source, str) and source else source_of(row_id),
        "image": {"bytes": image, "path": image_name},
        "prompt": prompt,
        "models": models,
        "completions": completions,
    }
