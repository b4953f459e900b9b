"""Load a pairing config for training without materialising one image copy per pair in the local cache.

``load_dataset(NAME, "pairs")`` turns the shared, dictionary-encoded image of an instruction's ~5 pairs into one
copy per pair row in its Arrow cache (~5× the ``raw`` bytes; ~19 GB per machine for the full release).
:func:`load_pairs` builds the same TRL rows from ``raw`` at load time instead, with the recorded policy of the
config (or any policy spec): the text columns of ``raw`` go through ``datasets``' cache, each instruction's image is
written once as a file, and every pair's ``images`` holds that file's path — the same ``List(Image())`` feature,
decoded to the same PIL image by ``datasets`` when a row is read. Both steps are cached and reused.

    from vlfeedback_kit.builders.load_pairs import load_pairs

    dataset = load_pairs("ORG/vlfeedback", "pairs", revision="v1.0.0")  # a DatasetDict, like load_dataset
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from vlfeedback_kit.builders.features import IMAGE_COLUMNS, PAIR_FEATURES, RAW_FEATURES
from vlfeedback_kit.builders.pairing import (
    PRESETS,
    PairingPolicy,
    materialize_pairs,
    parse_policy_spec,
    response_table,
    select_pairs,
)
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import UnsafeName, child, write_bytes, write_text

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

POLICIES_FILE = "pairing_policies.json"
TEXT_COLUMNS: list[str] = [name for name in RAW_FEATURES if name not in IMAGE_COLUMNS]
IMAGES_DONE = ".complete"
BATCH_ROWS = 256


def recorded_policies(path: str, revision: str | None = None) -> dict:
    """The ``pairing_policies.json`` of a built folder or a Hub dataset repo."""
    if Path(path).is_dir():
        file = Path(path) / POLICIES_FILE
        if not file.is_file():
            raise UserError(f"{path} is not a folder written by `vlfeedback build` (no {POLICIES_FILE})")
        return json.loads(file.read_text())
    from huggingface_hub import hf_hub_download

    from vlfeedback_kit.errors import hub_error, is_hub_error

    try:
        return json.loads(
            Path(hf_hub_download(path, POLICIES_FILE, repo_type="dataset", revision=revision)).read_text()
        )
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot read {POLICIES_FILE} of Hub dataset {path!r}", err) from err
        raise


def resolve_policy(path: str, pairing: str, revision: str | None = None) -> PairingPolicy:
    """A recorded config's policy by name, or a policy spec (``NAME:key=value,...`` or a preset)."""
    recorded = recorded_policies(path, revision)
    if pairing in recorded:
        return PairingPolicy.from_dict(recorded[pairing]["policy"])
    if ":" in pairing or pairing in PRESETS:
        try:
            return parse_policy_spec(pairing)[1]
        except ValueError as err:
            raise UserError(f"--pairing {pairing!r}: {err}") from err
    raise UserError(
        f"--pairing {pairing!r} is neither a config of {path} ({', '.join(recorded)}) nor a preset or "
        "NAME:key=value,... policy spec"
    )


def _write_images(path: str, split: str, revision: str | None, folder: Path) -> None:
    """Each instruction's image bytes, once, as ``folder/<id>.jpg``; streamed, never cached as Arrow.

    Every id is checked before anything is written: an id that is not a file name (``../x``, an absolute path) is
    a UserError naming its row, and no file (not even a ``.partial``) is written outside ``folder``.
    """
    from datasets import load_dataset

    if (folder / IMAGES_DONE).is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    stream = load_dataset(path, "raw", split=split, revision=revision, streaming=True, columns=["id", "image"])
    written = 0
    for batch in stream.with_format("arrow").iter(batch_size=BATCH_ROWS):
        ids, images = batch.column("id").to_pylist(), batch.column("image").combine_chunks().field("bytes")
        for number, (row_id, image) in enumerate(zip(ids, images), start=written):
            target = _image_path(folder, row_id, f"{path} raw/{split} row {number}")
            if not target.is_file():
                write_bytes(target, image.as_py())
        written += len(ids)
    write_text(folder / IMAGES_DONE, f"{written}\n")


def _image_path(folder: Path, row_id: object, where: str) -> Path:
    """``folder/<id>.jpg`` for a checked id; a UserError naming the row for an id that cannot name a file."""
    try:
        return child(folder, row_id, ".jpg", what="id")
    except UnsafeName as err:
        raise UserError(f"{where}: {err}; this is not a folder `vlfeedback build` wrote (it checks every id)") from err


def _pair_rows(raw: pa.Table, policy: PairingPolicy, images_dir: str) -> pa.Table:
    """TRL pair rows for a batch of ``raw`` text rows; ``images`` points at the instruction's image file."""
    names = raw.column("id").to_pylist()
    paths = pa.array([os.path.join(images_dir, f"{i}.jpg") for i in names], pa.string())  # ids checked on write
    image = pa.StructArray.from_arrays([pa.nulls(len(names), pa.binary()), paths], names=["bytes", "path"])
    pairs = materialize_pairs(
        raw.append_column("image", image), select_pairs(response_table(raw, policy.seed), policy)
    )
    return pairs.cast(PAIR_FEATURES.arrow_schema)


def load_pairs(
    path: str,
    pairing: str = "pairs",
    revision: str | None = None,
    split: str | None = None,
    cache_dir: str | None = None,
) -> Dataset | DatasetDict:
    """The pairs of ``pairing`` (a recorded config or a policy spec) built from ``raw``, images stored once locally.

    Same rows, columns and features as ``load_dataset(path, pairing)`` for a recorded config; ``path`` is a built
    folder or a Hub dataset id. Returns a ``DatasetDict`` (or the ``split``'s ``Dataset``).
    """
    from datasets import DatasetDict, load_dataset

    policy = resolve_policy(path, pairing, revision)
    text = load_dataset(path, "raw", revision=revision, cache_dir=cache_dir, columns=TEXT_COLUMNS)
    out = {}
    for name, dataset in text.items():
        if split is not None and name != split:
            continue
        folder = child(Path(dataset.cache_files[0]["filename"]).parent, f"images-{name}", what="split")
        _write_images(path, name, revision, folder)
        out[name] = (
            dataset.with_format("arrow")
            .map(
                _pair_rows,
                batched=True,
                batch_size=BATCH_ROWS,
                fn_kwargs={"policy": policy, "images_dir": str(folder)},
                remove_columns=dataset.column_names,
                features=PAIR_FEATURES,
                desc=f"pairs of {pairing!r} ({name})",
            )
            .with_format(None)
        )
    if split is not None:
        if split not in out:
            raise UserError(f"{path} has no split {split!r} (splits: {', '.join(text)})")
        return out[split]
    return DatasetDict(out)
