"""Reading the arena's votes (a votes folder or its Hub dataset), the one public way other parts of the kit read
them: :func:`read_votes`, :func:`is_votes_source` and :func:`vote_labels` (what ``vlfeedback agreement --human
VOTES`` calls). It imports only the kit's floor (``vlfeedback_kit.files``), never builders, eval or training, so
the builders' agreement study may use it without an import cycle."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from vlfeedback_kit.files import inside

logger = logging.getLogger(__name__)


def vote_lines(folder: Path, base: Path | None = None) -> Iterator[tuple[Path, int, dict]]:
    """``(file, line number, vote)`` for every vote in ``folder``'s ``data/*.jsonl`` (or ``*.jsonl``); a file that
    resolves outside ``base`` (default ``folder``; a symlink out) is an UnsafeName, a torn last line is skipped."""
    for path in sorted(folder.glob("data/*.jsonl")) or sorted(folder.glob("*.jsonl")):
        real = inside(base or folder, path, what="votes file")
        for number, line in enumerate(real.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield path, number, json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)


def hub_snapshot(repo_id: str, revision: str | None = None, patterns: list[str] | None = None) -> tuple[Path, Path]:
    """A votes repo downloaded to the HF cache: its snapshot folder and the repo's cache folder, under which the
    snapshot's files (links into ``blobs/``) must resolve."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
    return folder, folder.parent.parent


def read_votes(source: str | Path, revision: str | None = None) -> list[dict]:
    """Votes from a votes folder (``data/*.jsonl``) or a Hub dataset id; a torn last line (``kill -9``) is skipped."""
    folder, base = Path(source), None
    if not folder.exists():
        folder, base = hub_snapshot(str(source), revision, ["data/*.jsonl"])
    return [vote for _, _, vote in vote_lines(folder, base)]


HUMAN_PREFERENCE = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
"""A vote's winner as ``vlfeedback agreement`` reads a human label (both bad is a tie)."""


def is_votes_source(source: str | Path) -> bool:
    """Whether ``source`` is a votes folder (``data/votes-*.jsonl``) or a Hub dataset id (no such local path)."""
    path = Path(source)
    if path.is_dir():
        return any(path.glob("data/votes-*.jsonl"))
    return not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) is not None


def vote_labels(votes: Sequence[dict]) -> list[dict]:
    """The blind votes as human pairwise labels (``id`` = battle id, models as shown, ``preferred``), identity leaks
    left out; what ``vlfeedback agreement --human VOTES`` reads."""
    return [{"id": v["battle_id"], "model_a": v["model_a"], "model_b": v["model_b"],
             "preferred": HUMAN_PREFERENCE[v["winner"]], "aspect": "overall"}
            for v in votes if not v.get("names_model") and v.get("mode") == "battle"]  # fmt: skip
