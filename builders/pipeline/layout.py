"""The original release layout as the interchange between pipeline stages: ``*.jsonl`` + ``merged_images/<id>.jpg``.

Inputs are read lazily — a scan keeps each row's byte offset, and a row (and its image) is read again only when it
is worked on — so memory stays flat at 400K rows. Outputs are written so that an interrupted write never leaves a
half file under the final name, and a re-run replaces them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlfeedback_kit.builders.sources import IMAGE_DIR, ReleaseFolder
from vlfeedback_kit.builders.validate import REJECT_REASONS, Reject, check_id
from vlfeedback_kit.errors import UserError


@dataclass(frozen=True)
class Line:
    """One input line: its number and byte offset, and the parsed row or why it could not be read."""

    number: int
    offset: int
    row: dict | None
    error: tuple[str, str] | None = None

    def invalid(self, problem: tuple[str, str]) -> dict:
        """The failures-file entry of a line that cannot be worked on."""
        row_id = self.row.get("id") if self.row else None
        return {"line": self.number, "id": row_id, "outcome": "invalid", "reason": problem[0], "detail": problem[1]}


class StageInput(ReleaseFolder):
    """A stage's input folder: rows scanned with their byte offsets, and read back by offset through one handle."""

    _handle = None

    def lines(self) -> Iterator[Line]:
        """Every non-blank line of the jsonl, parsed, with its id checked; images are not read."""
        offset = 0
        with self.jsonl.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                    check_id(row)
                except UnicodeDecodeError as err:
                    yield Line(number, start, None, ("invalid_utf8", str(err)))
                except json.JSONDecodeError as err:
                    yield Line(number, start, None, ("invalid_json", str(err)))
                except Reject as err:
                    yield Line(number, start, row if isinstance(row, dict) else None, (err.reason, err.detail))
                else:
                    yield Line(number, start, row)

    def row(self, offset: int) -> dict:
        """The row at a byte offset found by ``lines``."""
        if self._handle is None:
            self._handle = self.jsonl.open("rb")
        self._handle.seek(offset)
        return json.loads(self._handle.readline().decode("utf-8"))

    def image_bytes(self, row: dict) -> bytes | None:
        """A row's image bytes, or None when it has none."""
        return self.image(row["id"], row)[0]

    def usable(self, line: Line, problem: str | None) -> tuple[bytes | None, tuple[str, str] | None]:
        """A scanned line's image, or why the line cannot be worked on: its read error, ``problem``, no image."""
        if line.error:
            return None, line.error
        if problem:
            return None, ("invalid_row", problem)
        image = self.image_bytes(line.row)
        return (image, None) if image else (None, ("missing_image", REJECT_REASONS["missing_image"]))

    def close(self) -> None:
        """Close the read handle."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> StageInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_input(path: Path, flag: str = "--input") -> StageInput:
    """A stage's input folder in the release layout."""
    if not path.is_dir():
        raise UserError(f"{flag} {path}: not a folder in the release layout (one *.jsonl + {IMAGE_DIR}/)")
    return StageInput(path)


def check_out(input_dir: Path, out_dir: Path) -> None:
    """Refuse an ``--out`` that is the ``--input`` folder, before anything is created inside it."""
    if Path(out_dir).resolve() == Path(input_dir).resolve():
        raise UserError(f"--out {out_dir} is the --input folder; write each stage to its own folder")


class JsonlWriter:
    """A JSON-lines file that appears under its name only when closed complete; as a context manager, a failure
    inside removes the partial ``*.tmp`` file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.temp = path.with_name(path.name + ".tmp")
        self.handle = self.temp.open("w", encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, row: dict) -> None:
        """Append one row."""
        self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        """Finish the file and move it into place."""
        self.handle.close()
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        """Drop the partial file (the final name keeps what an earlier complete run wrote)."""
        self.handle.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class LayoutWriter(JsonlWriter):
    """A stage's output in the release layout: ``OUT/<name>.jsonl`` plus ``OUT/merged_images/<id>.jpg``."""

    def __init__(self, out_dir: Path, jsonl_name: str, input_dir: Path | None = None) -> None:
        if input_dir is not None and out_dir.resolve() == input_dir.resolve():
            raise UserError(f"--out {out_dir} is the input folder; write each stage to its own folder")
        others = sorted(
            p.name for p in out_dir.glob("*.jsonl") if p.name not in (jsonl_name, "instruction_source.jsonl")
        )
        if others:
            raise UserError(
                f"--out {out_dir} already holds {', '.join(others)} from another stage; choose another --out"
            )
        super().__init__(out_dir / jsonl_name)
        self.images = out_dir / IMAGE_DIR
        self.images.mkdir(parents=True, exist_ok=True)
        self.written: set[str] = set()

    def add(self, row: dict, image: bytes) -> None:
        """Append a row and put its image (original bytes) at ``merged_images/<id>.jpg``."""
        path = self.images / f"{row['id']}.jpg"
        if not (path.is_file() and path.stat().st_size == len(image) and path.read_bytes() == image):
            temp = path.with_name(path.name + ".tmp")
            temp.write_bytes(image)
            os.replace(temp, path)
        self.written.add(path.name)
        self.write(row)

    def close(self) -> None:
        """Finish the jsonl and drop images left from an earlier run whose rows are no longer written."""
        super().close()
        for path in self.images.iterdir():
            if path.name not in self.written:
                path.unlink()
