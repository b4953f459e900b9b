"""``vlfeedback instructions``: collect instructions from source datasets into the release layout.

    vlfeedback instructions --out instructions/ \\
        --source llava=data/llava_instruct_150k.json --images llava=data/coco/train2017 \\
        --source lrv=data/lrv/filter_cap.json --images lrv=data/vg --source m3it=ORG/m3it-subset@main

Each source is read by a small data-driven adapter (``adapters.yaml``: which reader, which fields, how the image
is stored). A source draws its quota (default: the paper's table) as the first valid rows in a seeded random
order, skipping rows without a prompt (``no_prompt``), without an image file (``no_image``), whose image is not an
image (``bad_image``: its header does not decode) and duplicates of an earlier (image hash, prompt) — also across
sources. JPEG images are copied byte for byte; other formats (PNG, WebP, GIF…) are converted to JPEG, so
``merged_images/<id>.jpg`` always holds a JPEG. Rows get ids ``<prefix>-<n>``; ``instruction_source.jsonl`` says
where each came from, and ``instructions/report.json`` counts what was read, drawn, converted and skipped, per
source and reason, with a sentence saying why rows were skipped (a wrong ``--images`` folder, a field the records
do not have).
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import heapq
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import UnsafeName, inside
from vlfeedback_kit.hub_ids import is_hub_id, split_revision

ADAPTERS_FILE = Path(__file__).with_name("adapters.yaml")
OUTPUT_JSONL = "instructions.jsonl"
SOURCES_JSONL = "instruction_source.jsonl"
STAGE_DIR = "instructions"
DEFAULT_FILES = ("*.json", "*.jsonl", "*.csv", "*.parquet")
READERS = ("conversations", "fields")
IMAGE_KINDS = ("path", "base64", "bytes")
_FIELD = re.compile(r"\{([^{}]+)\}")
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Adapter:
    """How one source's records become (prompt, image)."""

    prefix: str
    name: str
    quota: int | None
    reader: str
    prompt: str = ""
    conversations: str = "conversations"
    image_field: str = "image"
    image_kind: str = "path"
    image_template: str = "{}"
    image_index: int = 0
    files: tuple[str, ...] = DEFAULT_FILES

    @classmethod
    def from_spec(cls, prefix: str, spec: dict) -> Adapter:
        """An adapter from its ``adapters.yaml`` entry, checked."""
        image = spec.get("image") or {}
        adapter = cls(
            prefix=prefix,
            name=str(spec.get("name", prefix)),
            quota=spec.get("quota"),
            reader=spec.get("reader", "conversations"),
            prompt=spec.get("prompt", ""),
            conversations=spec.get("conversations", "conversations"),
            image_field=image.get("field", "image"),
            image_kind=image.get("kind", "path"),
            image_template=image.get("template", "{}"),
            image_index=int(image.get("index", 0)),
            files=tuple(spec.get("files", DEFAULT_FILES)),
        )
        problems = [
            f"reader must be one of {READERS}" if adapter.reader not in READERS else "",
            "a fields reader needs a prompt template" if adapter.reader == "fields" and not adapter.prompt else "",
            f"image kind must be one of {IMAGE_KINDS}" if adapter.image_kind not in IMAGE_KINDS else "",
            "quota must be a positive integer" if adapter.quota is not None and not _positive(adapter.quota) else "",
            "the key must be a lowercase id prefix (letters, digits, dashes)"
            if not re.fullmatch(r"[a-z0-9-]+", prefix)
            else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise UserError(f"adapter {prefix!r}: {'; '.join(problems)}")
        return adapter

    @property
    def field_is_path(self) -> bool:
        """Whether the image field holds a file path (relative to ``--images``)."""
        return self.image_kind == "path"

    def fields(self) -> list[str]:
        """The record fields the adapter reads."""
        prompt = [self.conversations] if self.reader == "conversations" else _FIELD.findall(self.prompt)
        return [*dict.fromkeys([*prompt, self.image_field])]

    def describe(self) -> str:
        """One line for ``--help`` and ``--list-adapters``: the fields the adapter expects in each record."""
        prompt = (
            f"the first human turn of '{self.conversations}'"
            if self.reader == "conversations"
            else f"prompt {self.prompt!r}"
        )
        template = f" as {self.image_template!r}" if self.image_template != "{}" else ""
        index = f"[{self.image_index}]" if self.image_kind == "base64" else ""
        quota = self.quota if self.quota is not None else "all"
        return (
            f"{self.prefix} ({self.name}, quota {quota}): {prompt}; image '{self.image_field}'{index} "
            f"({self.image_kind}{template})"
        )

    def prompt_of(self, record: dict) -> str | None:
        """The instruction text of a record, or None when it has none."""
        if self.reader == "conversations":
            turns = record.get(self.conversations)
            first = next(
                (
                    t
                    for t in turns or []
                    if isinstance(t, dict) and (t.get("from") or t.get("role")) in ("human", "user")
                ),
                None,
            )
            text = (first.get("value") or first.get("content")) if first else None
            if not isinstance(text, str):
                return None
            return " ".join(text.replace("<image>", " ").split()) or None
        values = {}
        for name in _FIELD.findall(self.prompt):
            value = record.get(name)
            if value is None or value == "":
                return None
            values[name] = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        return _FIELD.sub(lambda match: values[match.group(1)], self.prompt).strip() or None

    def image_of(self, record: dict, root: Path, base: Path | None = None) -> bytes | None:
        """The image bytes of a record, or None when it has none (or it cannot be found or decoded).

        A path value is read only when it resolves (symlinks followed) inside ``root`` — or ``base``, the Hub cache
        folder of a downloaded source, whose files link into its ``blobs/`` —; any other is :class:`UnsafeName`:
        a record from a dataset never names a file elsewhere on the machine (``../../.ssh/id_rsa``, ``/etc/...``).
        """
        value = record.get(self.image_field)
        if isinstance(value, list):
            value = value[self.image_index] if len(value) > self.image_index else None
        if value is None or value == "":
            return None
        if self.image_kind == "base64":
            try:
                return base64.b64decode(value, validate=False) or None
            except (binascii.Error, TypeError, ValueError):
                return None
        if self.image_kind == "bytes":
            if isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
            if isinstance(value, bytes):
                return value or None
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            return None
        path = inside(base or root, root / self.image_template.format(value), what=f"image path {value!r}")
        return path.read_bytes() if path.is_file() else None


def as_jpeg(data: bytes) -> tuple[bytes | None, str | None]:
    """The image as JPEG bytes (JPEG: the same bytes) and the format it came in; (None, None) when the bytes are
    not an image whose header decodes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind = opened.format
            if kind == "JPEG":
                return data, kind
            opened.load()
            buffer = io.BytesIO()
            opened.convert("RGB").save(buffer, format="JPEG", quality=95)
            return buffer.getvalue(), kind
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, None


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_adapters(path: Path | None = None) -> dict[str, Adapter]:
    """The kit's adapters, with a user's file merged over them (same layout)."""
    specs: dict = {}
    for file in (ADAPTERS_FILE, path) if path else (ADAPTERS_FILE,):
        try:
            specs.update(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
        except (OSError, yaml.YAMLError, TypeError) as err:
            raise UserError(f"--adapters {file}: not an adapters file like {ADAPTERS_FILE.name} ({err})") from err
    return {str(prefix): Adapter.from_spec(str(prefix), spec or {}) for prefix, spec in specs.items()}


def read_records(path: Path) -> Iterator[dict]:
    """The records of a .json (a list, or an object holding one), .jsonl, .csv or .parquet file; a file that does
    not parse is a UserError naming it and the line."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                    yield from batch.to_pylist()
            except pa.ArrowException as err:
                raise UserError(f"{path}: not a readable Parquet file ({err})") from err
        elif suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                yield from csv.DictReader(handle)
        elif suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as err:
                            raise UserError(f"{path}: invalid JSON on line {number} ({err.msg})") from err
        else:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from err
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [])
            yield from (record for record in data if isinstance(record, dict))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from err


def source_files(location: Path, adapter: Adapter) -> list[Path]:
    """The files of a source: the file itself, or the files matching the adapter's patterns in a folder."""
    if location.is_file():
        return [location]
    return sorted({p for pattern in adapter.files for p in location.rglob(pattern) if p.is_file()})


def resolve_location(spec: str, prefix: str) -> Path:
    """A local path, or a Hub dataset ``ORG/NAME[@REVISION]`` downloaded into the HF cache."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    local = spec.startswith((".", "/", "~")) or path.suffix.lower() in DATA_SUFFIXES or path.parent.is_dir()
    if local and path.parent != Path("."):
        raise UserError(f"--source {prefix}={spec}: no such file or folder")
    if not is_hub_id(spec, revision=True):
        raise UserError(f"--source {prefix}={spec}: no such file or folder, and not a Hub dataset id ORG/NAME[@REV]")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo_id, revision = split_revision(spec)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise UserError(f"--source {prefix}={spec}: cannot fetch it from the Hub ({err})") from err


def priority(seed: int, prefix: str, index: int) -> bytes:
    """The seeded random rank of a record: quota draws take the lowest ranks first."""
    return hashlib.blake2b(f"{seed}/{prefix}/{index}".encode(), digest_size=8).digest()


def dedupe_key(image: bytes, prompt: str) -> bytes:
    """What makes two instructions the same: the image content and the prompt up to whitespace and case."""
    return hashlib.blake2b(image + b"\0" + " ".join(prompt.lower().split()).encode(), digest_size=16).digest()


@dataclass
class Drawn:
    """A record drawn for the output: where it came from, its prompt and image."""

    index: int
    origin: str
    prompt: str
    image: bytes
    converted_from: str | None = None


def draw(
    adapter: Adapter,
    files: list[Path],
    root: Path,
    quota: int | None,
    seed: int,
    seen: set[bytes],
    progress: bool = False,
    base: Path | None = None,
    unsafe: list[str] | None = None,
) -> tuple[list[Drawn], Counter]:
    """The first ``quota`` valid, new records in seeded random order (all in file order without a quota).

    Returns (drawn records in source order, counts). Only the candidates' ranks are held while scanning; a second
    pass reads the chosen ones, widening the candidate pool if skipped records leave the quota short. A record whose
    image path leads outside ``root`` (or ``base``) is skipped as ``unsafe_path``, its origin added to ``unsafe``.
    """
    from huggingface_hub.utils import tqdm

    total = sum(1 for f in files for _ in read_records(f))
    pool = total if quota is None else min(total, 2 * quota + 64)
    while True:
        order = (
            list(range(total))
            if quota is None
            else sorted(
                heapq.nsmallest(pool, range(total), key=lambda i: priority(seed, adapter.prefix, i)),
                key=lambda i: priority(seed, adapter.prefix, i),
            )
        )
        chosen = set(order)
        candidates: dict[int, tuple[str, dict]] = {}
        index = 0
        for file in files:
            for number, record in enumerate(read_records(file)):
                if index in chosen:
                    candidates[index] = (f"{file.name}:{number}", record)
                index += 1
        drawn, counts, local, escapes = [], Counter(read=total), set(), []
        for i in tqdm(order, desc=f"instructions {adapter.prefix}", unit=" rows", disable=not progress, leave=False):
            if quota is not None and len(drawn) == quota:
                break
            origin, record = candidates[i]
            prompt = adapter.prompt_of(record)
            try:
                image = adapter.image_of(record, root, base)
            except UnsafeName as err:
                counts["unsafe_path"] += 1
                escapes.append(f"{origin}: {err}")
                continue
            reason = "no_prompt" if not prompt else "no_image" if not image else None
            kind = None
            if reason is None:
                image, kind = as_jpeg(image)
                reason = "bad_image" if image is None else None
            key = dedupe_key(image, prompt) if reason is None else None
            if key is not None and (key in seen or key in local):
                reason = "duplicate"
            if reason:
                counts[reason] += 1
                continue
            local.add(key)
            drawn.append(Drawn(i, origin, prompt, image, None if kind == "JPEG" else kind))
        if quota is None or len(drawn) == quota or pool == total:
            seen |= local
            if unsafe is not None:
                unsafe.extend(escapes)
            counts["drawn"] = len(drawn)
            counts["converted"] = sum(d.converted_from is not None for d in drawn)
            counts.update(dict.fromkeys(SKIPS, 0))  # every reason in the report, 0 included
            return sorted(drawn, key=lambda d: d.index), counts
        pool = min(total, pool * 2)


SKIPS = ("no_prompt", "no_image", "bad_image", "duplicate", "unsafe_path")


def explain(adapter: Adapter, files: list[Path], root: Path, counts: Counter) -> list[str]:
    """Why a source's rows were skipped, in sentences a user can act on (empty when none were)."""
    looked = counts["drawn"] + sum(counts[reason] for reason in SKIPS)
    first = next((record for file in files for record in read_records(file)), None)
    keys = sorted(first) if first else []
    missing = [name for name in adapter.fields() if name not in keys]
    notes = []
    if missing and (counts["no_prompt"] or counts["no_image"]):
        shown = ", ".join(keys[:12]) + (", …" if len(keys) > 12 else "")
        notes.append(
            f"field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not in the records: {shown} "
            f"(is this a {adapter.prefix} file? see --list-adapters, or change the adapter with --adapters)"
        )
    elif counts["no_prompt"]:
        notes.append(f"{counts['no_prompt']}/{looked} rows had an empty prompt")
    if counts["no_image"] and adapter.field_is_path and adapter.image_field in keys:
        notes.append(
            f"{counts['no_image']}/{looked} rows had no image under {root} — pass --images {adapter.prefix}=DIR"
        )
    elif counts["no_image"] and adapter.image_field in keys:
        notes.append(f"{counts['no_image']}/{looked} rows had no image in '{adapter.image_field}'")
    if counts["bad_image"]:
        notes.append(f"{counts['bad_image']}/{looked} rows' images are not images (the header does not decode)")
    if counts["unsafe_path"]:
        notes.append(
            f"{counts['unsafe_path']}/{looked} rows' image paths lead outside {root} and were not read (a record "
            "never names a file elsewhere on this machine; see unsafe_paths)"
        )
    return notes


def parse_assignments(values: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` flags into a dict (each name once)."""
    result = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"{flag} {value!r}: expected NAME=VALUE")
        if name in result:
            raise UserError(f"{flag} names {name!r} twice")
        result[name] = rest
    return result


def collect(
    sources: dict[str, str],
    out_dir: Path,
    images: dict[str, str] | None = None,
    quotas: dict[str, str] | None = None,
    adapters_file: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Draw every source's instructions into ``out_dir`` in the release layout; returns the report."""
    from vlfeedback_kit.builders.pipeline.layout import JsonlWriter, LayoutWriter  # not at import: `--help`
    from vlfeedback_kit.files import write_json

    adapters = load_adapters(adapters_file)
    images, quotas = images or {}, quotas or {}
    unknown = sorted((set(sources) | set(images) | set(quotas)) - set(adapters))
    if unknown:
        raise UserError(f"no adapter for {', '.join(unknown)}; known: {', '.join(adapters)} (add one with --adapters)")
    stray = sorted((set(images) | set(quotas)) - set(sources))
    if stray:
        raise UserError(f"--images/--quota name {', '.join(stray)} without a --source")
    located = {}
    for prefix, spec in sources.items():
        adapter = adapters[prefix]
        location = resolve_location(spec, prefix)
        root = Path(images[prefix]) if prefix in images else (location if location.is_dir() else location.parent)
        if not root.is_dir():
            raise UserError(f"--images {prefix}={images[prefix]}: no such folder")
        files = source_files(location, adapter)
        if not files:
            raise UserError(f"--source {prefix}={spec}: no files matching {', '.join(adapter.files)}")
        located[prefix] = (adapter, _quota(quotas.get(prefix), adapter), root, _hub_cache(root, spec), files)
    seen: set[bytes] = set()
    report = {"seed": seed, "sources": {}}
    with LayoutWriter(out_dir, OUTPUT_JSONL) as writer, JsonlWriter(out_dir / SOURCES_JSONL) as origins:
        for prefix, (adapter, quota, root, base, files) in located.items():
            unsafe: list[str] = []
            drawn, counts = draw(adapter, files, root, quota, seed, seen, progress, base, unsafe)
            for n, record in enumerate(drawn):
                row_id = f"{prefix}-{n}"
                row = {"id": row_id, "source": adapter.name, "prompt": record.prompt, "models": [], "completions": []}
                writer.add(row, record.image)
                origin = {"id": row_id, "source": adapter.name, "origin": record.origin}
                origins.write(origin | ({"converted_from": record.converted_from} if record.converted_from else {}))
            report["sources"][prefix] = {
                "name": adapter.name,
                "quota": quota,
                **counts,
                "shortfall": max(0, (quota or 0) - len(drawn)),
                "notes": explain(adapter, files, root, counts),
                **({"unsafe_paths": unsafe[:20]} if unsafe else {}),
            }
    report["instructions"] = writer.count
    write_json(out_dir / STAGE_DIR / "report.json", report)
    return report


def _hub_cache(root: Path, spec: str) -> Path | None:
    """The Hub cache folder of a downloaded source read in place (its snapshot's files link into ``blobs/``)."""
    if Path(spec).expanduser().exists() or root.parent.name != "snapshots":
        return None
    return root.parent.parent


def _quota(value: str | None, adapter: Adapter) -> int | None:
    if value is None:
        return adapter.quota
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--quota {adapter.prefix}={value}: expected a positive number or 'all'")
    return int(value)
