"""Reading VLFeedback inputs as a stream of records: the original release layout, a Parquet copy, or a Hub id.

Each reader yields :class:`Record` objects in input order, one per input row, carrying either the parsed row and
its image bytes or the reason it could not be read — so the build can account for every row.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import UnsafeName, inside, name_problem
from vlfeedback_kit.hub_ids import is_hub_id

RELEASE_JSONL = "vlfeedback_80k.jsonl"
IMAGE_DIR = "merged_images"


@dataclass
class Record:
    """One input row: where it came from, the parsed object (or None) and its image bytes (or None)."""

    where: str
    line: int
    row: object = None
    image: bytes | None = None
    image_name: str | None = None
    error: tuple[str, str] | None = None
    raw_text: str | None = None


MAX_MEMBER_BYTES = 64 << 20
"""The most an image in ``merged_images.zip`` may inflate to (the original release's largest is a few MB)."""


def member_problem(member: str) -> str | None:
    """Why an archive member may not be read as an image (None when it may): its name is data, so every part of
    it must be a safe file name (no ``..``, no absolute or drive path, no backslash)."""
    if member.startswith("/"):
        return "it is an absolute name"
    for part in member.split("/"):
        problem = name_problem(part)
        if problem is not None:
            return f"its part {part!r} {problem}"
    return None


class ReleaseFolder:
    """The original layout: one ``*.jsonl`` plus ``merged_images/<id>.jpg`` or ``merged_images.zip``."""

    def __init__(self, root: Path, jsonl: Path | None = None) -> None:
        self.root = self.folder = root
        self.jsonl = jsonl or self._find_jsonl(root)
        self.image_dir = root / IMAGE_DIR
        self.zip_path = root / f"{IMAGE_DIR}.zip"
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: dict[str, str] = {}
        self._unsafe_members: dict[str, str] = {}
        if self.zip_path.is_file() and not self.image_dir.is_dir():
            self._zip = zipfile.ZipFile(self.zip_path)
            for member in self._zip.namelist():
                if not member.endswith("/"):
                    names = self._unsafe_members if member_problem(member) else self._zip_names
                    names[member.replace("\\", "/").rpartition("/")[2]] = member
        elif not self.image_dir.is_dir():
            raise UserError(
                f"{root} has no {IMAGE_DIR}/ folder and no {IMAGE_DIR}.zip; the original release keeps the images "
                f"there as {IMAGE_DIR}/<id>.jpg"
            )

    @staticmethod
    def _find_jsonl(root: Path) -> Path:
        if (root / RELEASE_JSONL).is_file():
            return root / RELEASE_JSONL
        candidates = sorted(p for p in root.glob("*.jsonl") if p.name != "instruction_source.jsonl")
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise UserError(f"{root} holds no *.jsonl file; expected {RELEASE_JSONL} beside {IMAGE_DIR}/")
        names = ", ".join(p.name for p in candidates)
        raise UserError(f"{root} holds several *.jsonl files ({names}); pass the one to ingest as --source FILE")

    def describe(self) -> str:
        """A one-line description of the input for logs and the report."""
        images = self.zip_path.name if self._zip else f"{IMAGE_DIR}/"
        return f"release folder {self.root} ({self.jsonl.name} + {images})"

    def image(self, row_id: str, row: dict) -> tuple[bytes | None, str]:
        """The image bytes of a row (None when absent) and its file name; an ``img_path`` hint that leads outside
        the release folder (``..``, an absolute path, a symlink out) is a Reject (``unsafe_path``), never read."""
        from vlfeedback_kit.builders.validate import Reject

        name = f"{row_id}.jpg"
        hinted = row.get("img_path") if isinstance(row.get("img_path"), str) else None
        if self._zip is not None:
            return self._zip_image(name, Path(hinted).name if hinted else None)
        try:  # ids are validated file names, so this path cannot leave the image folder
            return (self.image_dir / name).read_bytes(), name
        except (FileNotFoundError, IsADirectoryError):
            pass
        if hinted:
            try:
                path = inside(self.root, Path(hinted), what="img_path")
            except UnsafeName as err:
                raise Reject("unsafe_path", str(err)) from err
            if path.is_file():
                return path.read_bytes(), path.name
        return None, name

    def _zip_image(self, name: str, hinted: str | None) -> tuple[bytes | None, str]:
        """A member's bytes read into memory, never extracted: only a member whose every part is a safe name is
        read; one that would be this row's image but is not (``../``, an absolute name) is a Reject naming it."""
        from vlfeedback_kit.builders.validate import Reject

        member = self._zip_names.get(name) or self._zip_names.get(hinted or "")
        if member:
            size = self._zip.getinfo(member).file_size  # zipfile reads no more than this: a bomb is refused here
            if size > MAX_MEMBER_BYTES:
                detail = (f"{self.zip_path.name} member {member!r} is {size:,} bytes uncompressed, over the "
                          f"{MAX_MEMBER_BYTES >> 20} MiB an image may be; it is not read")  # fmt: skip
                raise Reject("unreadable_image", detail)
            return self._zip.read(member), member.rpartition("/")[2]
        unsafe = self._unsafe_members.get(name) or self._unsafe_members.get(hinted or "")
        if unsafe:
            detail = f"{self.zip_path.name} member {unsafe!r} is not read: {member_problem(unsafe)}"
            raise Reject("unsafe_path", detail)
        return None, name

    def records(self) -> Iterator[Record]:
        """Every line of the jsonl as a Record (blank lines are skipped and not rows)."""
        from vlfeedback_kit.builders.validate import Reject, check_id

        where = self.jsonl.name
        with self.jsonl.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    preview = raw[:200].decode("utf-8", "replace")
                    yield Record(where, number, error=("invalid_utf8", str(err)), raw_text=preview)
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    yield Record(where, number, error=("invalid_json", str(err)), raw_text=text.rstrip("\n"))
                    continue
                try:
                    row_id = check_id(row)
                    image, image_name = self.image(row_id, row)
                except Reject as err:
                    yield Record(where, number, row=row, error=(err.reason, err.detail))
                    continue
                yield Record(where, number, row=row, image=image, image_name=image_name)


class ParquetRelease:
    """A Parquet copy of the release with an embedded ``image`` column (struct of bytes/path, or binary)."""

    def __init__(self, files: list[Path], batch_size: int = 64) -> None:
        self.files = files
        self.folder = files[0].parent
        self.batch_size = batch_size

    def describe(self) -> str:
        """A one-line description of the input for logs and the report."""
        return f"parquet ({len(self.files)} file(s) under {self.files[0].parent})"

    def records(self) -> Iterator[Record]:
        """Every Parquet row as a Record, streamed batch by batch."""
        for path in self.files:
            parquet = pq.ParquetFile(path)
            if "image" not in parquet.schema_arrow.names:
                raise UserError(f"{path} has no 'image' column; the parquet copy must embed the images")
            number = 0
            for batch in parquet.iter_batches(batch_size=self.batch_size):
                for row in batch.to_pylist():
                    number += 1
                    image = row.pop("image", None)
                    image_bytes, image_name = (
                        (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
                    )
                    row_id = row.get("id")
                    name = Path(image_name).name if image_name else ""
                    name = name if name_problem(name) is None else f"{row_id}.jpg"  # stored as the image's path
                    yield Record(path.name, number, row=row, image=image_bytes, image_name=name)


def _parquet_files(path: Path) -> list[Path]:
    """Parquet files of a folder; for a kit-built (Hub-ready) folder only its ``raw`` config."""
    if path.is_file():
        return [path]
    raw_config = path / "data" / "raw"
    return sorted((raw_config if raw_config.is_dir() else path).rglob("*.parquet"))


def open_source(source: str, revision: str | None = None) -> ReleaseFolder | ParquetRelease:
    """A reader for a local release folder, a .jsonl file, Parquet file(s), or a Hub dataset id."""
    path = Path(source)
    if path.exists():
        if path.is_file() and path.suffix == ".jsonl":
            return ReleaseFolder(path.parent, jsonl=path)
        if path.is_file() and path.suffix == ".parquet":
            return ParquetRelease([path])
        if path.is_dir():
            has_jsonl = any(path.glob("*.jsonl"))
            parquet = [] if has_jsonl else _parquet_files(path)
            if parquet:
                return ParquetRelease(parquet)
            return ReleaseFolder(path)
        raise UserError(f"{source} is neither a release folder, a .jsonl file nor a .parquet file")
    if is_hub_id(source):
        return open_source(str(download_hub_source(source, revision)))
    raise UserError(
        f"source path does not exist: {source}. Pass a folder in the original release layout "
        f"({RELEASE_JSONL} + {IMAGE_DIR}/ or {IMAGE_DIR}.zip), a Parquet file or folder, or a Hub dataset id ORG/NAME"
    )


def download_hub_source(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the files a build needs from a Hub dataset repo (any ``HF_ENDPOINT``) into the local HF cache."""
    from huggingface_hub import HfApi, snapshot_download

    from vlfeedback_kit.errors import hub_error, is_hub_error

    api = HfApi()
    try:
        api.dataset_info(repo_id, revision=revision)  # one request, no retries: an unreachable Hub fails fast
        files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot read Hub dataset {repo_id!r} (revision {revision or 'main'})", err) from err
        raise
    if any(f.endswith(".parquet") for f in files):
        patterns = ["*.parquet", "**/*.parquet"]
    elif any(f.endswith(".jsonl") for f in files):
        patterns = ["*.jsonl", f"{IMAGE_DIR}.zip", f"{IMAGE_DIR}/*"]
    else:
        raise UserError(f"Hub dataset {repo_id!r} holds neither Parquet files nor a release *.jsonl: {files[:10]}")
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns)
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot download Hub dataset {repo_id!r} (revision {revision or 'main'})", err) from err
        raise
    return Path(folder)
