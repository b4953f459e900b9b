"""``vlfeedback inspect``: what a user wants to know about a built folder or a Hub repo before training on it.

Only Parquet footers and the column chunks a number needs are read — never an image column (the example's image
is the card's ``assets/example.*``) — so it is cheap on a local folder and on a Hub repo alike: through
``HfFileSystem`` every read is one HTTP range request for exactly those bytes (:func:`open_parquet`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlfeedback_kit.builders.features import ASPECTS, IMAGE_COLUMNS
from vlfeedback_kit.errors import UserError, hub_error, is_hub_error
from vlfeedback_kit.hub_ids import is_hub_id

MARGIN_BINS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.01)


def _open_target(target: str, revision: str | None):
    """A (filesystem, root) pair for a local folder or a Hub dataset id."""
    if Path(target).is_dir():
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(Path(target).resolve())
    if Path(target).exists() or not is_hub_id(target):
        raise UserError(f"{target} is neither a built folder nor a Hub dataset id ORG/NAME")
    from urllib.parse import quote

    from huggingface_hub import HfApi, HfFileSystem

    try:
        HfApi().dataset_info(target, revision=revision)  # one request, no retries: an unreachable Hub fails fast
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot read Hub dataset {target!r} (revision {revision or 'main'})", err) from err
        raise
    root = f"datasets/{target}" + (f"@{quote(revision, safe='')}" if revision else "")
    return HfFileSystem(skip_instance_cache=True), root


@contextmanager
def open_parquet(fs, path: str, footers: dict | None = None) -> Iterator[pq.ParquetFile]:
    """A Parquet file read by footer and column-chunk ranges only, closed after use.

    No read-ahead cache: fsspec's default (5 MiB blocks) would fetch the image column chunks beside the footer.
    ``footers`` (path → metadata) keeps each footer read once when a file is opened again.
    """
    with fs.open(path, "rb", cache_type="none") as handle:
        parquet = pq.ParquetFile(handle, metadata=(footers or {}).get(path))
        if footers is not None:
            footers[path] = parquet.metadata
        yield parquet


def _read_json(fs, path: str) -> dict | None:
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def _configs(fs, root: str) -> dict[str, dict[str, list[str]]]:
    """config → split → Parquet files, from the README's ``configs`` YAML."""
    from huggingface_hub import DatasetCard

    readme = f"{root}/README.md"
    if not fs.exists(readme):
        raise UserError(
            f"{root} has no README.md with a `configs` block; is it a folder written by `vlfeedback build`?"
        )
    card = DatasetCard(fs.cat_file(readme).decode("utf-8"))
    configs = {}
    for entry in card.data.to_dict().get("configs") or []:
        configs[entry["config_name"]] = {
            spec["split"]: sorted(
                f
                for pattern in ([spec["path"]] if isinstance(spec["path"], str) else spec["path"])
                for f in fs.glob(f"{root}/{pattern}")
            )
            for spec in entry.get("data_files", [])
        }
    return configs


def summarize(target: str, revision: str | None = None) -> dict:
    """Configs and row counts, rows per source, rating distributions, pairs per policy, margins, one example."""
    fs, root = _open_target(target, revision)
    try:
        return _summarize(fs, root, target, revision)
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot read {target!r} (revision {revision or 'main'})", err) from err
        raise


def _summarize(fs, root: str, target: str, revision: str | None) -> dict:
    configs = _configs(fs, root)
    footers: dict = {}
    summary: dict = {"target": target, "revision": revision, "configs": {}}
    for config, splits in configs.items():
        summary["configs"][config] = {
            split: sum(_num_rows(fs, f, footers) for f in files) for split, files in splits.items()
        }
    raw_files = [f for files in configs.get("raw", {}).values() for f in files]
    if raw_files:
        summary["sources"], summary["ratings"] = _raw_stats(fs, raw_files, footers)
    policies = _read_json(fs, f"{root}/pairing_policies.json") or {}
    summary["pairing"] = {}
    for config, splits in configs.items():
        if config in ("raw", "judgements"):
            continue
        files = [f for fs_files in splits.values() for f in fs_files]
        margins = np.concatenate([_column(fs, f, "margin", footers) for f in files]) if files else np.zeros(0)
        histogram, _ = np.histogram(margins, bins=MARGIN_BINS)
        summary["pairing"][config] = {
            "policy": policies.get(config, {}).get("policy"),
            "counts": policies.get(config, {}).get("counts"),
            "pairs": int(len(margins)),
            "margin_mean": round(float(margins.mean()), 3) if len(margins) else None,
            "margin_histogram": {
                f"[{lo:g},{hi:g})": int(n) for lo, hi, n in zip(MARGIN_BINS, MARGIN_BINS[1:], histogram)
            },
        }
    example_config = (
        "pairs" if "pairs" in configs else next((c for c in configs if c not in ("raw", "judgements")), None)
    )
    if example_config:
        first = next((f for files in configs[example_config].values() for f in files), None)
        if first:
            summary["example"] = _example(fs, root, first, footers)
    report = _read_json(fs, f"{root}/build_report.json")
    if report:
        summary["build"] = {
            k: report[k] for k in ("read", "kept", "rejected", "reasons", "null_ratings") if k in report
        }
    return summary


def _num_rows(fs, path: str, footers: dict) -> int:
    with open_parquet(fs, path, footers) as parquet:
        return parquet.metadata.num_rows


def _column(fs, path: str, name: str, footers: dict) -> np.ndarray:
    with open_parquet(fs, path, footers) as parquet:
        return parquet.read(columns=[name]).column(name).to_numpy()


RATING_COLUMNS = ["source"] + [f"completions.list.element.annotations.{aspect}.Rating" for aspect in ASPECTS]


def _raw_stats(fs, files: list[str], footers: dict) -> tuple[dict, dict]:
    sources: dict[str, int] = {}
    ratings = {aspect: {str(r): 0 for r in (1, 2, 3, 4, 5)} | {"null": 0} for aspect in ASPECTS}
    for path in files:
        with open_parquet(fs, path, footers) as parquet:
            table = parquet.read(columns=RATING_COLUMNS)
        for value in pc.value_counts(table.column("source").combine_chunks()).to_pylist():
            sources[value["values"]] = sources.get(value["values"], 0) + value["counts"]
        annotations = pc.list_flatten(table.column("completions").combine_chunks()).field("annotations")
        for aspect in ASPECTS:
            column = annotations.field(aspect).field("Rating")
            ratings[aspect]["null"] += column.null_count
            for value in pc.value_counts(column.drop_null()).to_pylist():
                ratings[aspect][str(value["values"])] += value["counts"]
    return dict(sorted(sources.items(), key=lambda kv: -kv[1])), ratings


def _example(fs, root: str, path: str, footers: dict) -> dict:
    """The first pair, texts only; its image is the card's ``assets/example.*`` (else read from the Parquet)."""
    from PIL import Image

    with open_parquet(fs, path, footers) as parquet:
        columns = [name for name in parquet.schema_arrow.names if name not in IMAGE_COLUMNS]
        row = parquet.read_row_group(0, columns=columns).slice(0, 1).to_pylist()[0]
        assets = sorted(fs.glob(f"{root}/assets/example.*"))
        if assets:
            image = fs.cat_file(assets[0])
        else:
            image = parquet.read_row_group(0, columns=["images"]).slice(0, 1).to_pylist()[0]["images"][0]["bytes"]
    with Image.open(io.BytesIO(image)) as decoded:
        image_info = f"{decoded.format} {decoded.size[0]}x{decoded.size[1]}, {len(image):,} bytes"

    def text(messages: list) -> str:
        return " ".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text")

    return {
        "id": row["id"],
        "image": image_info,
        "prompt": text(row["prompt"]),
        "chosen": f"[{row['chosen_model']} {row['chosen_ratings']}] {text(row['chosen'])}",
        "rejected": f"[{row['rejected_model']} {row['rejected_ratings']}] {text(row['rejected'])}",
        "margin": row["margin"],
    }


def _bar(n: int, total: int, width: int = 30) -> str:
    return "#" * (round(width * n / total) if total else 0)


def format_summary(summary: dict) -> str:
    """The summary as a readable report for the terminal."""
    lines = [f"{summary['target']}" + (f" @ {summary['revision']}" if summary["revision"] else "")]
    lines.append("\nconfigs (rows per split):")
    for config, splits in summary["configs"].items():
        lines.append(f"  {config:<18} " + ", ".join(f"{s}: {n:,}" for s, n in splits.items()))
    if "build" in summary:
        b = summary["build"]
        lines.append(
            f"\nbuild: read {b['read']:,}, kept {b['kept']:,}, rejected {b['rejected']:,} {b['reasons'] or ''}"
        )
        lines.append(f"  unparseable ratings nulled: {b['null_ratings']}")
    if "sources" in summary:
        total = sum(summary["sources"].values())
        lines.append("\nrows per source:")
        for source, n in summary["sources"].items():
            lines.append(f"  {source:<12} {n:>8,} {n / total:6.1%} {_bar(n, total)}")
        lines.append("\nrating distribution per aspect (share of responses, 1..5, null):")
        for aspect, dist in summary["ratings"].items():
            total = sum(dist.values())
            shares = "  ".join(f"{k}:{v / total:5.1%}" for k, v in dist.items())
            lines.append(f"  {aspect:<24} {shares}")
    for config, info in summary.get("pairing", {}).items():
        lines.append(f"\npairs in {config!r}: {info['pairs']:,} (mean margin {info['margin_mean']})")
        if info["policy"]:
            lines.append(f"  policy {json.dumps(info['policy'])}")
        top = max(info["margin_histogram"].values(), default=0)
        for edges, n in info["margin_histogram"].items():
            if n:
                lines.append(f"  margin {edges:<10} {n:>8,} {_bar(n, top)}")
    if "example" in summary:
        lines.append("\nexample pair:")
        lines.extend(f"  {k}: {str(v)[:200]}" for k, v in summary["example"].items())
    return "\n".join(lines)
