"""The kit's one check that a name is a Hub repo id, ``ORG/NAME`` or, where a revision may follow, ``ORG/NAME@REV``.

A name given on the command line or read from data (a run record, a pool, a source spec) is a Hub id only when it
has exactly one ``/`` and the Hub's own rules accept it (``huggingface_hub.utils.validate_repo_id``: ASCII letters,
digits, ``-``, ``_``, ``.``; no ``--`` or ``..``; no leading or trailing ``-``/``.``; at most 96 characters). A bare
word, a relative path with more parts, ``./x``, ``/x`` or ``~/x`` is a folder name, never a repo.
"""

from __future__ import annotations

import re
from pathlib import Path

_REVISION = re.compile(r"[\w./-]+", re.ASCII)
"""A branch, tag, commit or ``refs/pr/N``: what may follow ``@``."""


def split_revision(spec: str) -> tuple[str, str | None]:
    """``ORG/NAME@REV`` as ``(ORG/NAME, REV)``; without ``@`` the revision is None."""
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def is_hub_id(name: object, revision: bool = False) -> bool:
    """Whether ``name`` reads as a Hub repo id ``ORG/NAME`` (with ``revision``, ``ORG/NAME[@REV]``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str):
        return False
    repo_id, at, rev = name.partition("@") if revision else (name, "", "")
    if repo_id.count("/") != 1 or (at and not _REVISION.fullmatch(rev)):
        return False
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def folder_or_hub_problem(name: str, flag: str) -> str | None:
    """Why ``name`` names nothing — neither a folder here nor a Hub id ``ORG/NAME`` — or None, so that a typo is one
    line before any load instead of a Hub error after it."""
    path = Path(name).expanduser()
    if path.is_dir() or (not path.exists() and is_hub_id(name)):
        return None
    return f"{flag} {name}: no folder {name} here, and {name} is not a Hub id (ORG/NAME)"
