"""``vlfeedback build``: stream an input release into a Hub-ready dataset folder with one Parquet config per policy.

Layout written (a complete Hub dataset repo)::

    DIR/README.md                    card whose YAML declares every config (raw, pairs, extra pairing configs)
    DIR/data/<config>/<split>-0000k-of-0000n-<digest>.parquet   (content-addressed, listed in the card)
    DIR/pairing_policies.json        each pairing config's policy, fingerprint and counts
    DIR/build_report.json            read = kept + rejected, reasons, nulled ratings, throughput; the input by name
    DIR/rejects.jsonl                every rejected input row with its line, id, reason and the fix
    DIR/judge.json                   the judges of an annotated release (copied from the source when it has one)
    DIR/data/judgements/...          a release made by the pipeline: per id, the judge record and generation settings
    DIR/assets/                      the card's figures: rating distributions, the example row's image

A rebuild (``--overwrite``) replaces only what a build writes (:data:`BUILD_OUTPUTS`); anything else in the old
folder — the reference log-prob cache ``.ref_logps/`` that training keeps beside a local dataset, a user's notes —
is moved into the new one. A build that fails leaves ``DIR`` untouched and puts its report and rejects in
``DIR.failed/``.

Nothing a build records locates a folder of this machine (the folder is published as it is): a local source is
recorded by its name with ``"local": true``, the input's description names its folder, not its path, and a
pipeline's ``judge.json`` is copied with each local pool model or adapter named (``provenance.unlocated_judge``).

Memory stays flat: rows flow in batches of ``batch_size`` through validation, the ``raw`` writer and every pairing
policy, and nothing but the seen-id set grows with the input.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vlfeedback_kit.builders.features import ASPECTS, JUDGEMENT_FEATURES, PAIR_FEATURES, RAW_FEATURES
from vlfeedback_kit.builders.pairing import (
    PAIR_ARROW_SCHEMA,
    PRESETS,
    PairingPolicy,
    materialize_pairs,
    merge_counts,
    response_table,
    select_pairs,
)
from vlfeedback_kit.builders.provenance import judgement_of, unlocated_judge
from vlfeedback_kit.builders.sample import SAMPLE_RECORD
from vlfeedback_kit.builders.sources import ParquetRelease, Record, ReleaseFolder, open_source
from vlfeedback_kit.builders.validate import REJECT_REASONS, Reject, RowStats, canonical_row, check_image
from vlfeedback_kit.builders.writer import (
    DEFAULT_MAX_SHARD_BYTES,
    PAIR_ROW_GROUP_ROWS,
    RAW_ROW_GROUP_ROWS,
    ShardWriter,
)
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import folder_name, write_json

REPORT_FILE = "build_report.json"
REJECTS_FILE = "rejects.jsonl"
POLICIES_FILE = "pairing_policies.json"
JUDGE_FILE = "judge.json"
RAW_CONFIG = "raw"
PAIRS_CONFIG = "pairs"
JUDGEMENTS_CONFIG = "judgements"
FAILED_SUFFIX = ".failed"
BUILD_OUTPUTS = frozenset({"data", "assets", "README.md", REPORT_FILE, REJECTS_FILE, POLICIES_FILE, JUDGE_FILE})
"""The names a build writes in its folder; a rebuild replaces these and keeps everything else."""


@dataclass
class BuildOptions:
    """Everything ``build`` needs; the CLI flags map one to one."""

    source: str
    out_dir: Path
    policies: dict[str, PairingPolicy] = field(default_factory=lambda: {PAIRS_CONFIG: PRESETS[PAIRS_CONFIG]})
    revision: str | None = None
    max_reject_rate: float = 0.05
    eval_fraction: float = 0.0
    eval_seed: int = 42
    verify_images: str = "header"
    batch_size: int = 256
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    overwrite: bool = False
    progress: bool = True
    card: Callable[[Path], object] | None = None
    """Renders the dataset card (README.md, whose ``configs`` block ``load_dataset`` reads) into the folder before
    it is moved into place. ``vlfeedback build`` passes ``vlfeedback_kit.cards.dataset.write_dataset_card``; the
    dataset library itself never imports the cards (they read its records, not the other way round)."""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for reserved in (RAW_CONFIG, JUDGEMENTS_CONFIG):
            if reserved in self.policies:
                raise UserError(reserved_config_error(reserved))
        if self.policies.get(PAIRS_CONFIG, PRESETS[PAIRS_CONFIG]) != PRESETS[PAIRS_CONFIG]:
            raise UserError(reserved_config_error(PAIRS_CONFIG))
        if PAIRS_CONFIG not in self.policies:
            self.policies = {PAIRS_CONFIG: PRESETS[PAIRS_CONFIG], **self.policies}
        if not 0 <= self.max_reject_rate <= 1:
            raise UserError("--max-reject-rate must be between 0 and 1 (e.g. 0.05 for 5%)")
        if not 0 <= self.eval_fraction < 1:
            raise UserError("--eval-fraction must be in [0, 1) (the paper held out 0.005)")
        if self.verify_images not in ("header", "decode"):
            raise UserError("--verify-images must be 'header' or 'decode'")


def reserved_config_error(name: str) -> str:
    """Why the config ``name`` (``raw``, ``judgements`` or ``pairs``) cannot be made or replaced by a policy."""
    if name == RAW_CONFIG:
        why = "'raw' is the instruction-level config every pairing config is built from"
    elif name == JUDGEMENTS_CONFIG:
        why = "'judgements' holds the judge's record of every annotated row, keyed by id"
    else:
        why = (
            "'pairs' is always the paper's rule (all pairs, mean of the three ratings, exact ties dropped), "
            "which the card and training recipes rely on"
        )
    return f"{why}; it cannot be replaced by a pairing policy. Give this policy its own name, e.g. 'my-{name}:...'"


def split_of(row_ids: list[str], fraction: float, seed: int) -> list[str]:
    """Assign instructions to ``train``/``test`` by a seeded hash of the id: stable as the dataset grows."""
    if fraction <= 0:
        return ["train"] * len(row_ids)
    threshold = int(fraction * 2**64)
    return [
        "test"
        if int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") < threshold
        else "train"
        for i in row_ids
    ]


class RejectLog:
    """Running counts and the rejects file; ``read == kept + rejected`` by construction."""

    def __init__(self, rejects_path: Path) -> None:
        self.read = self.kept = self.rejected = 0
        self.reasons: dict[str, int] = {}
        self.null_ratings = dict.fromkeys(ASPECTS, 0)
        self._rejects = rejects_path.open("w", encoding="utf-8")

    def reject(self, record: Record, reason: str, detail: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        row = record.row if isinstance(record.row, dict) else None
        entry = {
            "file": record.where,
            "line": record.line,
            "id": row.get("id") if row else None,
            "reason": reason,
            "detail": detail,
            "fix": REJECT_REASONS.get(reason, ""),
            "row": row if row is not None else record.raw_text,
        }
        self._rejects.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")

    def close(self) -> None:
        self._rejects.close()


def canonical_rows(records: Iterable[Record], report: RejectLog, verify_images: str = "header") -> Iterator[dict]:
    """Validated canonical rows; rejects are written to the report as they are met."""
    seen: set[bytes] = set()
    stats = RowStats()
    for record in records:
        report.read += 1
        if record.error is not None:
            report.reject(record, *record.error)
            continue
        try:
            row = record.row
            if not isinstance(row, dict):
                raise Reject("invalid_json", f"expected a JSON object, got {type(row).__name__}")
            row_id = row.get("id")
            if record.image is None:
                raise Reject("missing_image", f"no image found for id {row_id!r} ({record.image_name})")
            check_image(record.image, verify_images)
            canonical = canonical_row(row, record.image, record.image_name, stats)
            key = hashlib.blake2b(canonical["id"].encode(), digest_size=12).digest()
            if key in seen:
                raise Reject("duplicate_id", f"id {canonical['id']!r} appeared earlier in the input")
            seen.add(key)
        except Reject as err:
            report.reject(record, err.reason, err.detail)
            continue
        report.kept += 1
        yield canonical | {JUDGEMENTS_CONFIG: judgement_of(row)}  # not a raw column: see JUDGEMENT_FEATURES
    report.null_ratings = stats.null_ratings


def batched(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Lists of up to ``size`` consecutive rows."""
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build(options: BuildOptions) -> dict:
    """Build the Hub-ready folder; returns the report. Raises UserError when the input is unusable."""
    from huggingface_hub.utils import tqdm

    out = options.out_dir
    check_out_dir(out, options.overwrite)
    reader = open_source(options.source, options.revision)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()

    report = RejectLog(staging / REJECTS_FILE)
    writers: dict[tuple[str, str], ShardWriter] = {}
    pair_counts = {name: {} for name in options.policies}
    split_counts: dict[str, dict[str, int]] = {name: {} for name in (RAW_CONFIG, *options.policies)}

    def writer(config: str, split: str) -> ShardWriter:
        if (config, split) not in writers:
            raw = config in (RAW_CONFIG, JUDGEMENTS_CONFIG)
            writers[config, split] = ShardWriter(
                staging / "data" / config,
                split,
                {RAW_CONFIG: RAW_FEATURES, JUDGEMENTS_CONFIG: JUDGEMENT_FEATURES}.get(config, PAIR_FEATURES),
                RAW_ROW_GROUP_ROWS if raw else PAIR_ROW_GROUP_ROWS,
                schema=None if raw else PAIR_ARROW_SCHEMA,
                shared_images=not raw,
                max_shard_bytes=options.max_shard_bytes,
            )
        return writers[config, split]

    schema = RAW_FEATURES.arrow_schema
    judgement_schema = JUDGEMENT_FEATURES.arrow_schema
    bar = tqdm(desc="build", unit=" rows", disable=not options.progress)
    try:
        for batch in batched(canonical_rows(reader.records(), report, options.verify_images), options.batch_size):
            table = pa.Table.from_pylist(batch, schema=schema)
            splits = split_of([r["id"] for r in batch], options.eval_fraction, options.eval_seed)
            for split in sorted(set(splits)):
                part = table.filter(pa.array([s == split for s in splits])) if len(set(splits)) > 1 else table
                writer(RAW_CONFIG, split).write(part)
                _add(split_counts[RAW_CONFIG], split, part.num_rows)
                judged = [r[JUDGEMENTS_CONFIG] for r, s in zip(batch, splits) if s == split and r[JUDGEMENTS_CONFIG]]
                if judged:
                    writer(JUDGEMENTS_CONFIG, split).write(pa.Table.from_pylist(judged, schema=judgement_schema))
                    _add(split_counts.setdefault(JUDGEMENTS_CONFIG, {}), split, len(judged))
                for name, policy in options.policies.items():
                    selection = select_pairs(response_table(part, policy.seed), policy)
                    merge_counts(pair_counts[name], selection.counts)
                    pairs = materialize_pairs(part, selection)
                    writer(name, split).write(pairs)
                    _add(split_counts[name], split, pairs.num_rows)
            bar.update(len(batch))
    finally:
        bar.close()
        report.close()
    files = {
        f"{config}/{split}": [p.relative_to(staging).as_posix() for p in w.close()]
        for (config, split), w in writers.items()
    }
    elapsed = time.perf_counter() - started

    local = Path(options.source).exists()
    result = {
        "source": folder_name(str(Path(options.source).resolve())) if local else options.source,
        "local": local,
        "source_name": _source_name(options.source, options.revision),
        "input": describe_input(reader),
        "input_file": input_file(reader),
        "revision": options.revision,
        "read": report.read,
        "kept": report.kept,
        "rejected": report.rejected,
        "reasons": dict(sorted(report.reasons.items())),
        "reject_rate": report.rejected / report.read if report.read else 0.0,
        "max_reject_rate": options.max_reject_rate,
        "null_ratings": report.null_ratings,
        "splits": split_counts,
        "eval_fraction": options.eval_fraction,
        "eval_seed": options.eval_seed,
        "verify_images": options.verify_images,
        "files": files,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(report.read / elapsed, 1) if elapsed else None,
    }
    sample = reader.folder / SAMPLE_RECORD
    if sample.is_file():
        result["synthetic_sample"] = json.loads(sample.read_text(encoding="utf-8"))
    policies = {
        name: {
            "policy": policy.to_dict(),
            "fingerprint": policy.fingerprint(),
            "counts": pair_counts[name],
            "splits": split_counts[name],
        }
        for name, policy in options.policies.items()
    }
    write_json(staging / REPORT_FILE, result)
    failed = _failure(result, options)
    if failed:
        where = _keep_report_only(staging, out)
        kept = f"{out} still holds the previous build; " if (out / REPORT_FILE).is_file() else ""
        raise UserError(f"{failed} {kept}this attempt's report: {where / REPORT_FILE} and {where / REJECTS_FILE}.")
    write_json(staging / POLICIES_FILE, policies)
    judge = reader.folder / JUDGE_FILE
    if judge.is_file():
        write_json(staging / JUDGE_FILE, unlocated_judge(read_judge_file(judge)))
    if options.card is not None:
        options.card(staging)
    _replace(out, staging)
    _drop_failed_report(out)
    return result


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds anything but a folder ``build`` wrote (``--overwrite`` replaces only that)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / REPORT_FILE).is_file():
        raise UserError(
            f"--out {out} is not empty and was not written by `vlfeedback build` (no {REPORT_FILE}); "
            "--overwrite only replaces a folder build wrote: choose a new or empty --out"
        )
    if not overwrite:
        raise UserError(f"{out} holds an earlier build; pass --overwrite to replace it or choose another --out")


def read_judge_file(path: Path) -> dict:
    """A source's ``judge.json`` (written by ``vlfeedback assemble``), or a one-line error naming it."""
    try:
        judge = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} cannot be read as JSON ({err}); write it again with `vlfeedback assemble`") from err
    if not isinstance(judge, dict):
        raise UserError(f"{path} is not a JSON object; write it again with `vlfeedback assemble`")
    return judge


def describe_input(reader: ReleaseFolder | ParquetRelease) -> str:
    """The input's one-line description with its folder named, not located (the report is published)."""
    folder = Path(reader.folder)
    return reader.describe().replace(str(folder), folder.name or str(folder))


def input_file(reader: ReleaseFolder | ParquetRelease) -> str | None:
    """The input jsonl's file name (``vlfeedback_80k.jsonl`` for the original release); None for Parquet."""
    jsonl = getattr(reader, "jsonl", None)
    return jsonl.name if jsonl is not None else None


def _source_name(source: str, revision: str | None) -> str:
    """How the card names the input: the Hub id (with revision), or a local folder's name (no machine paths)."""
    if Path(source).exists():
        return Path(source).resolve().name
    return f"{source}@{revision}" if revision else source


def _failure(result: dict, options: BuildOptions) -> str | None:
    if result["read"] == 0:
        return f"the input {result['input']} holds no rows."
    if result["kept"] == 0:
        return f"all {result['read']} rows were rejected ({result['reasons']})."
    if result["reject_rate"] > options.max_reject_rate:
        return (
            f"{result['rejected']} of {result['read']} rows rejected ({result['reject_rate']:.1%} > "
            f"--max-reject-rate {options.max_reject_rate:.1%}): {result['reasons']}. Fix the input, or raise "
            "--max-reject-rate if these rows should be dropped."
        )
    return None


def _keep_report_only(staging: Path, out: Path) -> Path:
    """On failure, put the report and the rejects in ``DIR.failed/`` and leave ``out`` (a previous, loadable
    build) as it was; returns that folder."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    failed.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_FILE, REJECTS_FILE):
        (staging / name).replace(failed / name)
    shutil.rmtree(staging)
    return failed


def _replace(out: Path, staging: Path) -> None:
    """Put the new build at ``out``: what the old folder holds besides a build's own outputs (the reference cache,
    a user's files) moves into the new one first, then the old build goes."""
    if not out.exists():
        staging.rename(out)
        return
    for path in out.iterdir():
        if path.name not in BUILD_OUTPUTS and not (staging / path.name).exists():
            path.rename(staging / path.name)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    out.rename(old / out.name)
    staging.rename(out)
    shutil.rmtree(old)


def _drop_failed_report(out: Path) -> None:
    """Remove the report of an earlier failed attempt once a build succeeds (only if it holds nothing else)."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    if failed.is_dir() and {p.name for p in failed.iterdir()} <= {REPORT_FILE, REJECTS_FILE}:
        shutil.rmtree(failed)


def _add(counts: dict[str, int], split: str, n: int) -> None:
    counts[split] = counts.get(split, 0) + n
