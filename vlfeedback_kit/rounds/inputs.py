"""The prompt pool and the held-out set as release-layout folders: a folder in the release layout is used as it is;
a folder written by ``vlfeedback build`` gives its ``raw`` config's ``train`` split as the prompt pool and its
``test`` split (``build --eval-fraction``) as the held-out set, exported once into ``OUT/inputs/``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json
from vlfeedback_kit.rounds.config import RoundsConfig

EXPORTED = "exported.json"


def is_built(folder: Path) -> bool:
    """A folder written by ``vlfeedback build`` (its card and a ``raw`` config), not a release layout."""
    return (folder / "README.md").is_file() and (folder / "data" / "raw").is_dir()


def export(folder: Path, split: str, target: Path, key: str) -> Path:
    """The ``raw`` config's ``split`` of a built folder written as a release layout (id, prompt, image) in
    ``target``; done once (``exported.json`` marks a complete export)."""
    from datasets import Image, load_dataset

    from vlfeedback_kit.builders.pipeline.layout import LayoutWriter

    if (target / EXPORTED).is_file():
        return target
    try:
        rows = load_dataset(str(folder), "raw", split=split).cast_column("image", Image(decode=False))
    except ValueError as err:  # datasets: an unknown split
        hint = " (build it with --eval-fraction to hold prompts out)" if split == "test" else ""
        raise UserError(f"{key} {folder}: its raw config has no `{split}` split{hint}") from err
    with LayoutWriter(target, "prompts.jsonl") as writer:
        for row in rows.select_columns(["id", "prompt", "image"]):
            writer.add({"id": row["id"], "prompt": row["prompt"]}, row["image"]["bytes"])
    write_json(target / EXPORTED, {"source": folder.name, "config": "raw", "split": split, "rows": len(rows)})
    return target


def resolve(config: RoundsConfig, out: Path) -> RoundsConfig:
    """``config`` with a built ``prompts`` / ``heldout`` folder replaced by its release-layout export."""
    changes = {}
    for key, split in (("prompts", "train"), ("heldout", "test")):
        folder = getattr(config, key)
        if is_built(folder):
            changes[key] = export(folder, split, out / "inputs" / key, key)
    return replace(config, **changes)
