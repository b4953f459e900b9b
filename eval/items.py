"""What every benchmark loader returns: one :class:`Item` per question, its image by path or bytes (read lazily)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Item:
    """One benchmark question: ``id`` is stable across data layouts (what responses and judgements are keyed by)."""

    id: str
    question: str
    answer: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def image_data(self) -> bytes:
        """The image file's bytes (an error naming the item when it has none)."""
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is None:
            raise FileNotFoundError(f"item {self.id}: no image")
        return Path(self.image_path).read_bytes()

    def image(self) -> Any:
        """The image as an RGB PIL image."""
        from PIL import Image

        return Image.open(io.BytesIO(self.image_data())).convert("RGB")

    def image_sha256(self) -> str:
        return hashlib.sha256(self.image_data()).hexdigest()


def image_bytes_of(value: Any) -> bytes | None:
    """The bytes of a parquet ``image`` cell (``{"bytes", "path"}`` struct, raw bytes, or None)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    return None


def read_parquet_rows(path: Path) -> list[dict]:
    """Every row of a parquet file, or of all ``*.parquet`` files under a folder (sorted by name)."""
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    rows: list[dict] = []
    for file in files:
        rows.extend(pq.read_table(file).to_pylist())
    return rows
