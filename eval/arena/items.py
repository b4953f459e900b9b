"""The voted battles as pipeline items (``vlfeedback space-votes``), so ``vlfeedback annotate`` can judge the same
answers the voters saw."""

from __future__ import annotations

import re
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.arena.votes import hub_snapshot, vote_lines
from vlfeedback_kit.files import UnsafeName, inside, safe_name


def votes_to_items(source: str | Path, out: Path) -> int:
    """Write the voted battles in the pipeline's release layout (``responses.jsonl`` + ``merged_images/<id>.jpg``)
    so ``vlfeedback annotate`` can judge the same answers the voters saw; returns the number of rows.

    A votes repo is data, not a path: a ``battle_id`` must be a plain file name and an ``image_sha256`` a sha256,
    and each file read must resolve inside the votes folder (or, for a Hub id, its cache folder). Every vote is
    checked before anything is written; a bad one is a UserError naming its file and line."""
    from vlfeedback_kit.builders.pipeline.layout import LayoutWriter

    folder, base = Path(source), None
    if not folder.exists():
        folder, base = hub_snapshot(str(source))
    rows = []
    try:
        for path, number, vote in vote_lines(folder, base):
            if vote.get("names_model") or vote.get("mode") != "battle":
                continue
            try:
                battle_id = safe_name(vote.get("battle_id"), "battle_id")
                sha = vote.get("image_sha256")
                if not isinstance(sha, str) or re.fullmatch(r"[0-9a-f]{64}", sha) is None:
                    raise UnsafeName(f"image_sha256 {sha!r} is not a sha256 (64 lowercase hex digits)")
                image = inside(base or folder, folder / "images" / f"{sha}.png", what="image")
            except UnsafeName as err:
                raise UserError(
                    f"{source}: {path.relative_to(folder)} line {number}: {err}; this votes folder "
                    "was not written by the arena or was altered: fix or drop that vote"
                ) from None
            if image.is_file():
                rows.append((vote, battle_id, image))
    except UnsafeName as err:  # a votes file that is a link out of the folder
        raise UserError(f"{source}: {err}; votes files must be inside the votes folder") from None
    writer = LayoutWriter(out, "responses.jsonl")
    for vote, battle_id, image in rows:
        writer.add({"id": battle_id, "prompt": vote["prompt"], "models": [vote["model_a"], vote["model_b"]],
                    "completions": [{"model": vote["model_a"], "response": vote["answer_a"]},
                                    {"model": vote["model_b"], "response": vote["answer_b"]}]},
                   image.read_bytes())  # fmt: skip
    writer.close()
    return len(rows)
