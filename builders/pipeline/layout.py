"""The original release layout as the interchange between pipeline stages: ``*.jsonl`` + ``merged_images/<id>.jpg``.

Inputs are read lazily — a scan keeps each row's byte offset, and a row (and its image) is read again only when it
is worked on — so memory stays flat at 400K rows. Outputs are written so that an interrupted write never leaves a
half file under the final name, and a re-run replaces them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlfeedback_kit.builders.sources import IMAGE_DIR, ReleaseFolder
from vlfeedback_kit.builders.validate import REJECT_REASONS, Reject, check_id, check_image
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import UnsafeName, child, write_bytes, write_json

logger = logging.getLogger(__name__)
IMAGES_RECORD = ".merged_images.json"
"""The images a stage's writer put in ``merged_images/`` (the only ones a later run of that stage may remove)."""


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
        """A row's image bytes, or None when it has none (an ``img_path`` leading outside the folder is none)."""
        return self._image_file(row)[0]

    def _image_file(self, row: dict) -> tuple[bytes | None, str]:
        """A row's image bytes (None: no file, b"": an empty one) and the name of the file they come from."""
        try:
            return self.image(row["id"], row)
        except Reject:
            return None, f"{row['id']}.jpg"

    def usable(self, line: Line, problem: str | None) -> tuple[bytes | None, tuple[str, str] | None]:
        """A scanned line's image, or why the line cannot be worked on: its read error, ``problem``, no image, or an
        image that does not decode in full (an empty file, a truncated JPEG, not an image). Every pixel is decoded
        here, so that no stage sends a model or a judge a broken picture, nor dies on one mid-run."""
        if line.error:
            return None, line.error
        if problem:
            return None, ("invalid_row", problem)
        try:
            image, name = self.image(line.row["id"], line.row)
        except Reject as err:  # an img_path or zip member leading out, a zip bomb: its own reason, never read
            return None, (err.reason, err.detail)
        if image is None:
            return None, ("missing_image", REJECT_REASONS["missing_image"])
        try:
            check_image(image, "decode")
        except Reject as err:
            return None, (err.reason, f"{self._where(line.row, name)}: {err.detail}")
        return image, None

    def _where(self, row: dict, name: str) -> str:
        """Where a row's image file ``name`` was read from, as a report names it (relative to the folder)."""
        if self._zip is not None:
            return f"{self.zip_path.name} member {name}"
        if (self.image_dir / name).is_file():
            return f"{IMAGE_DIR}/{name}"
        return f"img_path {row.get('img_path')}"

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
    """A stage's output in the release layout: ``OUT/<name>.jsonl`` plus ``OUT/merged_images/<id>.jpg``.

    The images it writes are recorded in ``OUT/.merged_images.json``; closing removes only images that an earlier
    run of the same stage recorded and this run did not write. Any other file in ``merged_images/`` (put there by a
    user or another tool) stays, with a warning.
    """

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
        self.record = out_dir / IMAGES_RECORD
        self.earlier = self._earlier_images(jsonl_name)
        self.written: set[str] = set()

    def _earlier_images(self, jsonl_name: str) -> set[str]:
        """The images an earlier run of this stage (same jsonl) recorded writing."""
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return set()
        if not isinstance(record, dict) or record.get("jsonl") != jsonl_name:
            return set()
        return {name for name in record.get("images", []) if isinstance(name, str)}

    def add(self, row: dict, image: bytes) -> None:
        """Append a row and put its image (original bytes) at ``merged_images/<id>.jpg``; an id that cannot name a
        file (``../x``, an absolute path) is a UserError naming it, and nothing is written."""
        try:
            path = child(self.images, row.get("id"), ".jpg", what="row id")
        except UnsafeName as err:
            raise UserError(f"{self.path.name}: {err}; ids must be plain file names") from err
        if not (path.is_file() and path.stat().st_size == len(image) and path.read_bytes() == image):
            write_bytes(path, image)
        self.written.add(path.name)
        self.write(row)

    def _save_record(self, images: set[str]) -> None:
        write_json(self.record, {"jsonl": self.path.name, "images": sorted(images)})

    def close(self) -> None:
        """Finish the jsonl; drop the images an earlier run of this stage wrote whose rows are no longer written,
        and keep (with a warning) any file in ``merged_images/`` this stage never wrote."""
        super().close()
        foreign = []
        for path in sorted(self.images.iterdir()):
            if path.name in self.written:
                continue
            if path.name in self.earlier and path.is_file() and not path.is_symlink():
                path.unlink()
            else:
                foreign.append(path.name)
        self._save_record(self.written)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
            logger.warning(
                "%s/ holds %d file(s) this stage did not write (%s); kept, but they are not part of %s",
                self.images,
                len(foreign),
                shown,
                self.path.name,
            )

    def abort(self) -> None:
        """Drop the partial jsonl; the images written so far are recorded so a later run may replace them."""
        super().abort()
        self._save_record(self.earlier | self.written)
