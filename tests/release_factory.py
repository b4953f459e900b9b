"""Small hand-made releases in the original layout, for tests that need exact control over every row."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

ORIGINAL_ASPECT_ORDER = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")


def jpeg(colour: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> bytes:
    """A small valid JPEG with some texture (so its entropy-coded data is longer than its headers)."""
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), colour)
    image.putdata([(colour[0], (x * 7) % 256, (x * 13) % 256) for x in range(size * size)])
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def completion(model: str, response: str, ratings: tuple) -> dict:
    """A completion as the original release writes it (string ratings, original aspect order).

    ``ratings`` is (Helpfulness, Visual Faithfulness, Ethical Considerations) — the kit's order.
    """
    helpfulness, faithfulness, ethics = ratings
    by_aspect = {"Helpfulness": helpfulness, "Visual Faithfulness": faithfulness, "Ethical Considerations": ethics}
    return {
        "annotations": {
            aspect: {"Rating": str(by_aspect[aspect]), "Rationale": f"{aspect} rationale"}
            for aspect in ORIGINAL_ASPECT_ORDER
        },
        "model": model,
        "response": response,
    }


def row(row_id: str, ratings: list[tuple], responses: list[str] | None = None, prompt: str = "What is shown?") -> dict:
    """An instruction row with one completion per ratings tuple."""
    models = [f"model-{k}" for k in range(len(ratings))]
    responses = responses or [f"answer {k} of {row_id}" for k in range(len(ratings))]
    return {
        "id": row_id,
        "prompt": prompt,
        "models": models,
        "completions": [completion(m, r, x) for m, r, x in zip(models, responses, ratings)],
    }


def write_release(
    folder: Path, rows: list, images: dict[str, bytes] | None = None, lines: list[bytes] | None = None
) -> Path:
    """Write ``vlfeedback_80k.jsonl`` (rows as JSON, then raw ``lines``) and one JPEG per row id (or ``images``)."""
    (folder / "merged_images").mkdir(parents=True, exist_ok=True)
    with (folder / "vlfeedback_80k.jsonl").open("wb") as out:
        for item in rows:
            out.write(json.dumps(item).encode() + b"\n")
        for line in lines or []:
            out.write(line + b"\n")
    if images is None:
        images = {item["id"]: jpeg() for item in rows if isinstance(item, dict) and isinstance(item.get("id"), str)}
    for name, data in images.items():
        (folder / "merged_images" / f"{name}.jpg").write_bytes(data)
    return folder
