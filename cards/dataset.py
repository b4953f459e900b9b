"""The dataset card of a Hub-ready VLFeedback folder, rendered from the folder's own records.

Every number in the card comes from ``build_report.json`` and ``pairing_policies.json``; the template only words
them. Rendering goes through ``huggingface_hub``'s ``DatasetCard.from_template``.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"
LICENSE = "cc-by-nc-4.0"


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def configs_block(report: dict, default: str = "pairs") -> list[dict]:
    """The README ``configs`` YAML: one entry per config, one data_files entry per split."""
    configs = []
    for config, splits in report["splits"].items():
        entry = {
            "config_name": config,
            "data_files": [{"split": split, "path": f"data/{config}/{split}-*.parquet"} for split in sorted(splits)],
        }
        if config == default:
            entry["default"] = True
        configs.append(entry)
    return configs


def render_dataset_card(folder: Path) -> DatasetCard:
    """Render the card of a built folder (README.md content with YAML metadata)."""
    report = json.loads((folder / "build_report.json").read_text())
    policies = json.loads((folder / "pairing_policies.json").read_text())
    raw_rows = sum(report["splits"]["raw"].values())
    data = DatasetCardData(
        license=LICENSE,
        language="en",
        pretty_name="VLFeedback",
        task_categories=["image-text-to-text", "visual-question-answering"],
        size_categories=size_category(raw_rows),
        tags=["dpo", "preference", "vision-language", "ai-feedback", "gpt-4v", "vlfeedback"],
        configs=configs_block(report),
    )
    return DatasetCard.from_template(
        data, template_path=str(TEMPLATE), report=report, policies=policies, raw_rows=raw_rows
    )
