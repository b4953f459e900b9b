"""The kit's one check that a string from data may name a file, and its one way to write a file other stages read.

Data is never a path: an id, a battle id, a content hash or a template value from a dataset, a Hub repo, a votes
repo or a source file becomes part of a file name only through :func:`safe_name`, and a path built from data is
used only once :func:`inside` has confirmed it resolves under its root (symlinks included). Files that another
stage reads appear under their name complete or not at all (:func:`atomic_write`, :func:`write_json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeName(ValueError):
    """A string from data that may not become a file name (the message says which and why)."""


def name_problem(value: object) -> str | None:
    """Why ``value`` may not be a file name (None when it may): it must be a non-empty str of at most 200
    characters, with no path separator, no control character, not starting with a dot (no ``..``, no hidden
    file), no Windows drive (``C:``) and no surrounding spaces."""
    if not isinstance(value, str):
        return f"should be a string, got {type(value).__name__}"
    if not value.strip():
        return "is empty"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if value.startswith("."):
        return "starts with a dot"
    if _CONTROL.search(value):
        return "contains a control character"
    if value != value.strip():
        return "has leading or trailing spaces"
    if len(value) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if re.match(r"^[A-Za-z]:", value):
        return "starts with a drive letter"
    return None


def safe_name(value: object, what: str = "name") -> str:
    """``value`` unchanged when it may become a file name; otherwise :class:`UnsafeName` naming ``what``."""
    problem = name_problem(value)
    if problem is not None:
        raise UnsafeName(f"{what} {value!r} cannot name a file: it {problem}")
    return value  # type: ignore[return-value]


def inside(root: Path, path: Path, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed) when it lies under ``root`` resolved; otherwise :class:`UnsafeName`."""
    base = Path(root).resolve()
    resolved = (base / path).resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeName(f"{what} {str(path)!r} resolves outside {Path(root).name}/ (to a file the kit may not use)")
    return resolved


def folder_name(name: str) -> str:
    """A local folder's name, never its location (``/home/me/runs/silkie`` → ``silkie``): what records and cards
    that may be published say of a local path."""
    return Path(os.path.normpath(name)).name or name


def child(root: Path, name: object, suffix: str = "", what: str = "name") -> Path:
    """``root / (name + suffix)`` for a name from data, after :func:`safe_name` and :func:`inside`."""
    return inside(root, Path(safe_name(name, what) + suffix), what)


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on failure it is
    removed and ``path`` keeps what it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as temp:
        temp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON (UTF-8, trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
