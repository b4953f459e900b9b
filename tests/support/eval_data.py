"""Synthetic mini-benchmarks in each official layout (tiny images, a handful of items), written in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLOURS = ("red", "blue", "green", "black", "white", "yellow", "purple", "orange")
MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")


def png(colour: str, size: int = 56) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def write_mme(
    folder: Path, subtasks: tuple[str, ...] = ("existence", "artwork", "code_reasoning"), images: int = 2
) -> Path:
    """The raw release layout: ``artwork`` SPLIT (images/ + questions_answers_YN/), the others FLAT."""
    for subtask in subtasks:
        split = subtask in ("artwork", "celebrity", "landmark", "posters", "scene")
        for i in range(images):
            colour = COLOURS[i % len(COLOURS)]
            text = (
                f"Is there a {colour} square in the image? Please answer yes or no.\tYes\n"
                f"Is there a {COLOURS[(i + 1) % 8]} square in the image?  Please answer yes or no.\tNo\n"
            )
            image_dir = folder / subtask / "images" if split else folder / subtask
            text_dir = folder / subtask / "questions_answers_YN" if split else folder / subtask
            image_dir.mkdir(parents=True, exist_ok=True)
            text_dir.mkdir(parents=True, exist_ok=True)
            (image_dir / f"{i}.png").write_bytes(png(colour))
            (text_dir / f"{i}.txt").write_text(text)
    return folder


def write_mmhal(folder: Path, n: int = 8) -> Path:
    """``response_template.json`` (empty model answers) and ``test_data/`` images."""
    (folder / "test_data").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        (folder / "test_data" / f"img{i}.png").write_bytes(png(COLOURS[i % 8]))
        records.append({"question_type": MMHAL_TYPES[i % 8], "question_topic": "shapes", "image_id": f"img{i}",
                        "image_src": f"https://example.org/images/img{i}.png", "image_content": ["Square", "Shape"],
                        "question": f"What colour is the square in picture {i}?",
                        "gt_answer": f"The square is {COLOURS[i % 8]}.", "model_answer": ""})  # fmt: skip
    (folder / "response_template.json").write_text(json.dumps(records, indent=2))
    return folder


def write_mmvet(folder: Path, n: int = 4) -> Path:
    caps = (["rec"], ["ocr", "math"], ["rec", "know", "gen"], ["ocr"])
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = {}
    for i in range(n):
        (folder / "images" / f"v1_{i}.png").write_bytes(png(COLOURS[i % 8]))
        data[f"v1_{i}"] = {"imagename": f"v1_{i}.png", "capability": caps[i % 4],
                           "question": f"What colour is shape {i}?", "answer": COLOURS[i % 8]}  # fmt: skip
    (folder / "mm-vet.json").write_text(json.dumps(data))
    return folder


def write_winrate(path: Path, n: int = 3) -> Path:
    """A ``raw``-config Parquet file of held-out prompts."""
    rows = [{"id": f"held-{i}", "source": "svit", "image": {"bytes": png(COLOURS[i % 8]), "path": None},
             "prompt": f"Describe the {COLOURS[i % 8]} picture."} for i in range(n)]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_redteam(folder: Path, n: int = 2) -> Path:
    """RTVLM's layout: one ``<subtask>.jsonl`` per subtask, ``img/<index>.jpg`` beside it (real JPEGs)."""
    data = folder / "data" / "Misleading"
    (data / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (56, 56), COLOURS[i % 8]).save(buffer, format="JPEG")
        (data / "img" / f"{i}.jpg").write_bytes(buffer.getvalue())
        records.append({"index": i, "questions": f"Is the {COLOURS[i % 8]} square dangerous?"})
    (data / "misleading.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder
