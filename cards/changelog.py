"""What changed between two releases of a dataset folder: rows by id, configs, pairing policies, judges.

A release is read into a :class:`Snapshot` through any fsspec filesystem: the local folder, or the previous tag on
the Hub through ``HfFileSystem`` (Parquet footers and the few small columns needed, by HTTP range reads: image bytes
are never fetched). Rows of the ``raw`` config are matched by ``id`` and compared by three digests — the prompt,
the responses (models and texts) and the judgements (ratings and rationales) — so an entry says what changed in a
row. Image bytes are not compared: in VLFeedback an image is named by its instruction's id.

:func:`compare` and :func:`format_entry` are pure; the changelog section of a card is the new entry followed by the
entries of the previous release's card (:func:`changelog_section`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlfeedback_kit.builders.inspect import open_parquet
from vlfeedback_kit.cards.dataset import JUDGE_FILE, judge_statement

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

ROW_COLUMNS: tuple[str, ...] = ("id", "prompt", "models", "completions")
ROW_PARTS: tuple[str, ...] = ("prompt", "responses", "judgements")
"""What a row digest covers, part by part: the prompt; models and response texts; ratings and rationales."""
MAX_IDS = 10
"""Ids listed per kind of change in an entry (the counts are always complete)."""
SECTION = re.compile(r"^## Changelog[ \t]*\n(.*?)(?=^## |\Z)", re.S | re.M)


@dataclass
class Snapshot:
    """The parts of a release the changelog compares."""

    label: str
    rows: dict[str, tuple[bytes, ...]] | None = None
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    policies: dict = field(default_factory=dict)
    judges: list[dict] | None = None
    source_name: str | None = None
    report: dict = field(default_factory=dict)
    card: str | None = None


def _digest(value: object) -> bytes:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, ensure_ascii=False).encode(), digest_size=8).digest()


def row_digests(rows: list[dict]) -> dict[str, tuple[bytes, ...]]:
    """id → (prompt, responses, judgements) digests of ``raw`` rows."""
    return {
        row["id"]: (
            _digest(row["prompt"]),
            _digest([row["models"], [(c["model"], c["response"]) for c in row["completions"]]]),
            _digest([c["annotations"] for c in row["completions"]]),
        )
        for row in rows
    }


def _configs(card_text: str) -> dict[str, dict[str, list[str]]]:
    """config name → split → path patterns, from a README's ``configs`` YAML (either ``data_files`` form)."""
    from huggingface_hub import DatasetCard

    configs: dict[str, dict[str, list[str]]] = {}
    for entry in DatasetCard(card_text).data.to_dict().get("configs") or []:
        data_files = entry.get("data_files") or []
        specs = data_files if isinstance(data_files, list) else [data_files]
        for spec in specs:
            split, paths = (spec["split"], spec["path"]) if isinstance(spec, dict) else ("train", spec)
            patterns = configs.setdefault(entry["config_name"], {}).setdefault(split, [])
            patterns.extend(paths if isinstance(paths, list) else [paths])
    return configs


def read_snapshot(fs: AbstractFileSystem, root: str, label: str) -> Snapshot:
    """A release at ``root`` of filesystem ``fs`` (a local folder, or ``datasets/ORG/NAME@TAG`` on the Hub)."""

    def read_json(name: str) -> dict | None:
        path = f"{root}/{name}"
        return json.loads(fs.cat_file(path)) if fs.exists(path) else None

    readme = f"{root}/README.md"
    snapshot = Snapshot(label=label, card=fs.cat_file(readme).decode("utf-8") if fs.exists(readme) else None)
    configs = _configs(snapshot.card) if snapshot.card else {}
    for config, splits in configs.items():
        for split, patterns in splits.items():
            files = sorted({path for pattern in patterns for path in fs.glob(f"{root}/{pattern}")})
            rows = 0
            for path in files:
                with open_parquet(fs, path) as parquet:
                    rows += parquet.metadata.num_rows
                    if config == "raw":
                        snapshot.rows = snapshot.rows or {}
                        for batch in parquet.iter_batches(batch_size=1024, columns=list(ROW_COLUMNS)):
                            snapshot.rows.update(row_digests(batch.to_pylist()))
            snapshot.splits.setdefault(config, {})[split] = rows
    snapshot.policies = read_json("pairing_policies.json") or {}
    snapshot.judges = (read_json(JUDGE_FILE) or {}).get("judges")
    snapshot.report = read_json("build_report.json") or {}
    snapshot.source_name = snapshot.report.get("source_name")
    return snapshot


def compare(old: Snapshot, new: Snapshot) -> dict:
    """The differences between two snapshots, as plain data (rows by id, configs, policies, judges, source)."""
    diff: dict = {"previous": old.label}
    if old.rows is not None and new.rows is not None:
        shared = old.rows.keys() & new.rows.keys()
        changed = sorted(i for i in shared if old.rows[i] != new.rows[i])
        diff["rows"] = {
            "before": len(old.rows),
            "after": len(new.rows),
            "added": sorted(new.rows.keys() - old.rows.keys()),
            "removed": sorted(old.rows.keys() - new.rows.keys()),
            "changed": changed,
            "changed_parts": {
                part: sum(old.rows[i][k] != new.rows[i][k] for i in changed) for k, part in enumerate(ROW_PARTS)
            },
            "unchanged": len(shared) - len(changed),
        }
    diff["configs"] = {
        config: (old.splits.get(config), new.splits.get(config))
        for config in [*new.splits, *(c for c in old.splits if c not in new.splits)]
        if old.splits.get(config) != new.splits.get(config)
    }
    diff["policies"] = {}
    for config in [*new.policies, *(c for c in old.policies if c not in new.policies)]:
        before, after = old.policies.get(config), new.policies.get(config)
        if before is None or after is None:
            diff["policies"][config] = {"added" if before is None else "removed": (after or before)["policy"]}
        elif before["fingerprint"] != after["fingerprint"]:
            diff["policies"][config] = {
                "changed": {
                    key: (before["policy"].get(key), value)
                    for key, value in after["policy"].items()
                    if before["policy"].get(key) != value
                }
            }
    if old.judges != new.judges:
        diff["judges"] = (old.judges, new.judges)
        diff["reports"] = (old.report, new.report)
    if old.source_name != new.source_name:
        diff["source"] = (old.source_name, new.source_name)
    return diff


def _ids(ids: list[str]) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:MAX_IDS])
    return shown + (f" … and {len(ids) - MAX_IDS:,} more" if len(ids) > MAX_IDS else "")


def _splits(splits: dict[str, int] | None) -> str:
    return ", ".join(f"{split} {n:,}" for split, n in splits.items()) if splits else "none"


def _judges(judges: list[dict] | None, report: dict | None = None) -> str:
    if not judges:
        return judge_statement(report or {})
    return "; ".join(
        f"`{j['model']}` (template sha256 `{j['template_sha256'][:12]}`, {j['items']:,} items)" for j in judges
    )


def first_release_entry(version: str, date: str, new: Snapshot) -> str:
    """The changelog entry of a dataset's first release."""
    configs = "; ".join(f"`{config}` ({_splits(splits)})" for config, splits in new.splits.items())
    lines = [f"### {version} — {date}", "", f"First release, built from `{new.source_name}`."]
    lines.append(f"- **Configs**: {configs}.")
    lines.append(f"- **Judge**: {_judges(new.judges, new.report)}.")
    return "\n".join(lines)


def format_entry(version: str, date: str, diff: dict) -> str:
    """One changelog entry (a ``###`` heading and bullets) from :func:`compare`'s output."""
    lines = [f"### {version} — {date}", "", f"Compared with {diff['previous']}:"]
    rows = diff.get("rows")
    if rows is None:
        lines.append("- **Rows**: not compared (one of the releases has no `raw` config).")
    else:
        parts = ", ".join(f"{part} {n:,}" for part, n in rows["changed_parts"].items())
        lines.append(
            f"- **Rows** (`raw`, matched by `id`): {rows['before']:,} → {rows['after']:,}; "
            f"{len(rows['added']):,} added, {len(rows['removed']):,} removed, {len(rows['changed']):,} changed"
            f"{f' (in {parts})' if rows['changed'] else ''}, {rows['unchanged']:,} unchanged."
        )
        for kind in ("added", "removed", "changed"):
            if rows[kind]:
                lines.append(f"  - {kind}: {_ids(rows[kind])}")
    if diff["configs"]:
        changes = [
            f"`{config}` {_splits(before) if before else 'new'} → {_splits(after) if after else 'removed'}"
            for config, (before, after) in diff["configs"].items()
        ]
        lines.append(f"- **Configs**: {'; '.join(changes)}.")
    else:
        lines.append("- **Configs**: same configs and row counts.")
    if diff["policies"]:
        changes = []
        for config, change in diff["policies"].items():
            kind, detail = next(iter(change.items()))
            if kind == "changed":
                detail = ", ".join(f"{key} {json.dumps(a)} → {json.dumps(b)}" for key, (a, b) in detail.items())
            else:
                detail = json.dumps(detail, sort_keys=True)
            changes.append(f"`{config}` {kind}: {detail}")
        lines.append(f"- **Pairing policies**: {'; '.join(changes)}.")
    else:
        lines.append("- **Pairing policies**: unchanged.")
    if "judges" in diff:
        (before, after), (old_report, new_report) = diff["judges"], diff.get("reports", ({}, {}))
        lines.append(f"- **Judge**: {_judges(before, old_report)} → {_judges(after, new_report)}.")
    else:
        lines.append("- **Judge**: unchanged.")
    if "source" in diff:
        before, after = diff["source"]
        lines.append(f"- **Built from**: `{after}` (was `{before}`).")
    return "\n".join(lines)


def previous_entries(card_text: str | None) -> str:
    """The entries (``###`` headings onwards) of a card's changelog section; empty when it has none."""
    match = SECTION.search(card_text or "")
    if match is None:
        return ""
    body = match.group(1)
    start = body.find("### ")
    return body[start:].strip() if start >= 0 else ""


def changelog_section(entry: str, previous_card: str | None) -> str:
    """The new entry followed by the previous release's entries, newest first."""
    older = previous_entries(previous_card)
    return f"{entry}\n\n{older}" if older else entry
