"""Reading and extending a Hub-ready folder written by ``vlfeedback build``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlfeedback_kit.builders.build import (
    JUDGEMENTS_CONFIG,
    PAIRS_CONFIG,
    POLICIES_FILE,
    RAW_CONFIG,
    REPORT_FILE,
    reserved_config_error,
)
from vlfeedback_kit.builders.features import PAIR_FEATURES
from vlfeedback_kit.builders.pairing import (
    PAIR_ARROW_SCHEMA,
    PairingPolicy,
    materialize_pairs,
    merge_counts,
    response_table,
    select_pairs,
)
from vlfeedback_kit.builders.writer import PAIR_ROW_GROUP_ROWS, ShardWriter
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json


def read_records(folder: Path) -> tuple[dict, dict]:
    """The build report and the pairing-policy record of a built folder."""
    report_path, policies_path = folder / REPORT_FILE, folder / POLICIES_FILE
    if not report_path.is_file() or not policies_path.is_file():
        raise UserError(f"{folder} is not a folder written by `vlfeedback build` (no {REPORT_FILE}/{POLICIES_FILE})")
    return json.loads(report_path.read_text()), json.loads(policies_path.read_text())


def raw_batches(folder: Path, split: str, batch_rows: int = 256) -> Iterator[pa.Table]:
    """Stream the ``raw`` config of one split in batches of whole instructions."""
    for path in sorted((folder / "data" / RAW_CONFIG).glob(f"{split}-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])


def add_pairing_config(
    folder: Path,
    name: str,
    policy: PairingPolicy,
    dry_run: bool = False,
    overwrite: bool = False,
    card: Callable[[Path], object] | None = None,
) -> dict:
    """Build a new pairing config from the folder's ``raw`` config; updates the records and, through ``card``
    (``vlfeedback pairs`` passes ``cards.dataset.write_dataset_card``), the card's ``configs`` block."""
    report, policies = read_records(folder)
    if name in (RAW_CONFIG, PAIRS_CONFIG, JUDGEMENTS_CONFIG) and not dry_run:
        raise UserError(reserved_config_error(name))
    if name in policies and not overwrite and not dry_run:
        raise UserError(f"config {name!r} already exists in {folder}; pass --overwrite or pick another name")
    target = folder / "data" / name
    staging = folder / "data" / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    counts: dict[str, int] = {}
    splits: dict[str, int] = {}
    writers = []
    for split in report["splits"][RAW_CONFIG]:
        writer = ShardWriter(
            staging, split, PAIR_FEATURES, PAIR_ROW_GROUP_ROWS, schema=PAIR_ARROW_SCHEMA, shared_images=True
        )
        for raw in raw_batches(folder, split):
            selection = select_pairs(response_table(raw, policy.seed), policy)
            merge_counts(counts, selection.counts)
            if not dry_run:
                writer.write(materialize_pairs(raw, selection))
            splits[split] = splits.get(split, 0) + selection.counts["pairs"]
        writers.append(writer)
    record = {"policy": policy.to_dict(), "fingerprint": policy.fingerprint(), "counts": counts, "splits": splits}
    if dry_run:
        return record
    for writer in writers:
        writer.close()
    replaced = folder / "data" / f".{name}.replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    if target.exists():
        target.rename(replaced)  # the config is never missing: old shards until the new ones are in place
    staging.rename(target)
    shutil.rmtree(replaced, ignore_errors=True)
    policies[name] = record
    report["splits"][name] = splits
    write_json(folder / POLICIES_FILE, policies)
    write_json(folder / REPORT_FILE, report)
    if card is not None:
        card(folder)
    return record
