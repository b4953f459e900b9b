"""The dataset card of a Hub-ready VLFeedback folder, rendered from the folder's own data and records.

Every number in the card comes from the folder: ``build_report.json`` and ``pairing_policies.json`` (counts,
policies), the optional ``judge.json`` (judge models and template hashes), the optional ``agreement.json``
(``vlfeedback agreement --out``: this release's judge-vs-human agreement, with the labels it was measured
against), the Parquet schema (column types, and
the ``dataset_info`` metadata) and the ``raw`` Parquet's small columns (rows per source, rating distributions,
per-model mean scores; image bytes are never read for statistics). The template only words them.

What the card claims about who rated the responses, the licence and the paper's figures follows the release's
origin (:func:`release_origin`): the kit's synthetic sample, a release judged through the kit's pipeline
(``judge.json``), the original VLFeedback release (the Hub repo ``MMInstruction/VLFeedback`` or its
``vlfeedback_80k.jsonl``), or a source that records no judge. Only the original release is said to be judged by
GPT-4V, gets the paper's figures (labelled as the paper's) and the original's CC BY-NC 4.0 licence by default;
any other release states the licence given with ``--license``, or none.

Rendering writes the figures the card shows into ``assets/`` (one rating-distribution PNG per aspect, and the
example row's image) and goes through ``huggingface_hub``'s ``DatasetCard.from_template`` with ``DatasetCardData``
for the metadata.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from vlfeedback_kit.builders.features import ASPECTS, PAIR_FEATURES
from vlfeedback_kit.builders.sources import RELEASE_JSONL
from vlfeedback_kit.cards.plots import RATING_LABELS, rating_distribution_plot, slug
from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from datasets.info import DatasetInfosDict

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = TEMPLATES / "dataset_card.md"
CITATION = TEMPLATES / "citation.bib"
ORIGINAL_LICENSE = "cc-by-nc-4.0"
"""The original release's licence: the card's default for the original release only."""
ORIGINAL_REPO = "MMInstruction/VLFeedback"
ASSETS_DIR = "assets"
JUDGE_FILE = "judge.json"
AGREEMENT_FILE = "agreement.json"
"""This release's judge-vs-human agreement, as ``vlfeedback agreement --out`` writes it (results, judged folder,
label file name, sha256 and count)."""
JUDGEMENTS_CONFIG = "judgements"
DEFAULT_CONFIG = "pairs"
UNPUBLISHED_TARGET = "ORG/NAME"
PAPER_JUDGE = (
    "GPT-4V (gpt-4-vision-preview), as reported by the paper; per-row judge metadata not in the original release"
)
SYNTHETIC_JUDGE = (
    "None: this folder was built from the kit's synthetic sample (`vlfeedback sample`{details}); its responses and "
    "ratings are drawn by a procedural generator from each image's known content, not written by the model pool "
    "nor judged by GPT-4V"
)
UNKNOWN_JUDGE = (
    "Not recorded: the source (`{source}`) carries no `judge.json` and is not the original VLFeedback release, so "
    "who rated these responses is not known to the kit"
)
TEXT_PREVIEW_CHARS = 300
COLUMN_DOCS: dict[str, str] = {
    "id": "instruction id; its prefix names the source dataset",
    "source": "source dataset of the instruction, from the id prefix",
    "image": "the instruction's image, original bytes (JPEG in the release)",
    "images": "the instruction's image as a one-element list, as TRL's DPOTrainer reads it",
    "prompt": "the instruction (`raw`), or the user turn with an image placeholder (pairs)",
    "models": "the models that answered, in completion order",
    "completions": "each model's response with a 1–5 rating (null if unparseable) and a rationale per aspect",
    "chosen": "the preferred assistant turn",
    "rejected": "the dispreferred assistant turn",
    "chosen_model": "model that wrote the chosen response",
    "rejected_model": "model that wrote the rejected response",
    "chosen_ratings": "the chosen response's rating per aspect",
    "rejected_ratings": "the rejected response's rating per aspect",
    "chosen_score": "the chosen response's score under the config's aggregation",
    "rejected_score": "the rejected response's score under the config's aggregation",
    "margin": "chosen_score − rejected_score, computed once from the ratings (float64): the value `min_margin` "
    "was compared with",
}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def release_origin(report: dict, judges: list[dict] | None = None) -> str:
    """Where a build's ratings come from, from what the build recorded: ``sample`` (the kit's synthetic sample),
    ``pipeline`` (judged through the kit's pipeline: ``judge.json``), ``original`` (the original VLFeedback release:
    the Hub repo, or an input jsonl named ``vlfeedback_80k.jsonl``: ``input_file``, or an older build's ``input``
    description) or ``unknown``."""
    if report.get("synthetic_sample") is not None:
        return "sample"
    if judges:
        return "pipeline"
    source = str(report.get("source") or "")
    if not report.get("local") and source.lower() == ORIGINAL_REPO.lower():
        return "original"
    if "input_file" in report:  # recorded by the build since it has the field
        return "original" if report["input_file"] == RELEASE_JSONL else "unknown"
    if f"({RELEASE_JSONL} " in str(report.get("input") or ""):  # an older build: only the description names it
        return "original"
    return "unknown"


def judge_statement(report: dict) -> str:
    """Who rated the responses when the folder has no ``judge.json``: the synthetic sample, the paper's judge (for
    the original release only), or nobody the kit knows of."""
    origin = release_origin(report)
    if origin == "original":
        return PAPER_JUDGE
    if origin == "unknown":
        return UNKNOWN_JUDGE.format(source=report.get("source_name") or "unnamed")
    sample = report["synthetic_sample"]
    details = ", ".join(f"{key} {sample[key]}" for key in ("seed", "instructions") if key in sample)
    return SYNTHETIC_JUDGE.format(details=f", {details}" if details else "")


def public_name(value: str | dict | None) -> str | None:
    """A model, adapter or folder as a card may show it: a local one (``{"name", "local": true}`` as a build
    records it, or an absolute path in an older ``judge.json``) becomes its folder name marked ``(local)`` — named,
    never located; anything else (a Hub id, an API model name) is kept."""
    if isinstance(value, dict):
        name = str(value.get("name") or "")
        return f"{name} (local)" if value.get("local") else name or None
    if not value or not Path(value).is_absolute():
        return value
    return f"{Path(value).name} (local)"


def policy_description(policy: dict) -> str:
    """A pairing config in a few words: strategy and aggregation, then every option that differs from the default."""
    from vlfeedback_kit.builders.pairing import PairingPolicy

    defaults = PairingPolicy().to_dict()
    aggregation = policy["aggregation"] + (
        f" {'/'.join(f'{w:g}' for w in policy['weights'])}" if policy.get("weights") else ""
    )
    changed = [
        f"{key}={value}"
        for key, value in policy.items()
        if key not in ("strategy", "aggregation", "weights") and value != defaults.get(key)
    ]
    paper = policy == defaults
    return (
        f"{policy['strategy']}, {aggregation}"
        + "".join(f", {c}" for c in changed)
        + (" — the paper's rule" if paper else "")
    )


def configs_block(folder: Path, report: dict, default: str = DEFAULT_CONFIG) -> list[dict]:
    """The README ``configs`` YAML: one entry per config, each split listing its (content-addressed) files.

    Exact file names rather than a glob: ``datasets`` caches a local folder's configs under a key made from this
    block, so listing the files is what keeps ``load_dataset`` from serving a rebuilt folder from a stale cache.
    """
    configs = []
    for config, splits in report["splits"].items():
        entry = {
            "config_name": config,
            "data_files": [
                {
                    "split": split,
                    "path": [p.relative_to(folder).as_posix() for p in config_files(folder, config, {split: 0})],
                }
                for split in sorted(splits)
            ],
        }
        if config == default:
            entry["default"] = True
        configs.append(entry)
    return configs


def config_files(folder: Path, config: str, splits: dict[str, int]) -> list[Path]:
    """The Parquet files of one config, every split, in the order the ``configs`` globs list them."""
    return [path for split in sorted(splits) for path in sorted((folder / "data" / config).glob(f"{split}-*.parquet"))]


def feature_type(feature: object) -> str:
    """A compact type string for a ``datasets`` feature: ``string``, ``image``, ``list<{role: string, ...}>``."""
    from datasets import Image, List, Value

    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, List):
        return f"list<{feature_type(feature.feature)}>"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{name}: {feature_type(sub)}" for name, sub in feature.items()) + "}"
    return type(feature).__name__


def schema_of(files: list[Path]) -> list[dict[str, str]]:
    """Column name, type and meaning of a config, from the ``datasets`` features stored in its Parquet schema."""
    from datasets import Features

    features = Features.from_arrow_schema(pq.read_schema(files[0])) if files else PAIR_FEATURES
    return [
        {"name": name, "type": feature_type(feature), "doc": COLUMN_DOCS.get(name, "")}
        for name, feature in features.items()
    ]


def rating_table(raw_files: list[Path]) -> pa.Table:
    """One row per response of the ``raw`` config: ``model`` and one rating column per aspect (nested reads only)."""
    columns = ["completions.list.element.model"] + [
        f"completions.list.element.annotations.{aspect}.Rating" for aspect in ASPECTS
    ]
    parts = []
    for path in raw_files:
        flat = pc.list_flatten(pq.ParquetFile(path).read(columns=columns).column("completions").combine_chunks())
        annotations = flat.field("annotations")
        ratings = {aspect: annotations.field(aspect).field("Rating") for aspect in ASPECTS}
        parts.append(pa.table({"model": flat.field("model"), **ratings}))
    return pa.concat_tables(parts)


def rating_distributions(responses: pa.Table) -> dict[str, dict[str, int]]:
    """Per aspect, the number of responses rated 1..5 and the number whose rating did not parse (``null``)."""
    distributions = {}
    for aspect in ASPECTS:
        column = responses.column(aspect)
        counts = {str(v["values"]): v["counts"] for v in pc.value_counts(column.drop_null()).to_pylist()}
        distributions[aspect] = {label: counts.get(label, 0) for label in RATING_LABELS[:-1]} | {
            "null": column.null_count
        }
    return distributions


def model_scores(responses: pa.Table) -> list[dict]:
    """Per model: responses, mean rating per aspect (nulls skipped) and their average; best average first."""
    grouped = (
        responses.group_by("model")
        .aggregate([("model", "count")] + [(aspect, "mean") for aspect in ASPECTS])
        .to_pylist()
    )
    rows = []
    for group in grouped:
        means = {aspect: group[f"{aspect}_mean"] for aspect in ASPECTS}
        known = [m for m in means.values() if m is not None]
        rows.append(
            {
                "model": group["model"],
                "responses": group["model_count"],
                "means": means,
                "average": sum(known) / len(known) if known else None,
            }
        )
    return sorted(rows, key=lambda r: (-(r["average"] or 0), r["model"]))


def source_counts(raw_files: list[Path]) -> dict[str, int]:
    """Instructions per source, most first."""
    counts: dict[str, int] = {}
    for path in raw_files:
        for value in pc.value_counts(pq.read_table(path, columns=["source"]).column("source")).to_pylist():
            counts[value["values"]] = counts.get(value["values"], 0) + value["counts"]
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def mean_margin(files: list[Path]) -> float | None:
    """Mean score margin of a pairing config's pairs; None when it has none."""
    chunks = [c for p in files for c in pq.ParquetFile(p).read(columns=["margin"]).column("margin").chunks]
    return pc.mean(pa.chunked_array(chunks, type=pa.float64())).as_py()


def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_PREVIEW_CHARS:
        return text
    return text[:TEXT_PREVIEW_CHARS].rstrip() + " …"


def example_row(files: list[Path], assets: Path) -> dict | None:
    """The first pair row, its texts shortened and its image written to ``assets/example.<ext>``; None if empty."""
    from PIL import Image

    path = next((p for p in files if pq.ParquetFile(p).metadata.num_rows), None)
    if path is None:
        return None
    row = pq.ParquetFile(path).read_row_group(0).slice(0, 1).to_pylist()[0]
    image = row["images"][0]["bytes"]
    with Image.open(io.BytesIO(image)) as decoded:
        fmt, size = decoded.format or "image", decoded.size
    name = f"{ASSETS_DIR}/example.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
    (assets / Path(name).name).write_bytes(image)
    for key in ("prompt", "chosen", "rejected"):
        for message in row[key]:
            for part in message["content"]:
                part["text"] = _preview(part["text"])
    row["images"] = [name]
    row = {key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}
    lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in row.items())
    return {
        "image": name,
        "image_info": f"{fmt} {size[0]}×{size[1]}, {len(image):,} bytes",
        "text": f"{{\n{lines}\n}}",
    }


def read_judge(folder: Path) -> list[dict] | None:
    """The judges recorded in ``judge.json`` by the AI-feedback pipeline; None when the folder has none."""
    path = folder / JUDGE_FILE
    return json.loads(path.read_text())["judges"] if path.is_file() else None


def read_pool(folder: Path) -> list[dict] | None:
    """The model pool with its decoding settings, as ``judge.json`` records it (None when it does not); a local
    model or adapter is shown by its folder name."""
    path = folder / JUDGE_FILE
    pool = json.loads(path.read_text()).get("pool") if path.is_file() else None
    return [
        member | {key: public_name(member.get(key)) for key in ("model", "adapter")} for member in pool or []
    ] or None


def read_agreement(folder: Path, report: dict | None = None) -> dict | None:
    """This release's overall judge-vs-human agreement from ``agreement.json`` (``vlfeedback agreement --out``):
    agreement, 95% interval, decisive pairs and matched labels, and what it was measured on — the judged folder,
    the label file's name, sha256 and count — which the card cites; None when it was not measured.

    The card states only agreement measured on this release: a file that does not say what it was measured on (the
    bare ``--json`` output) or that names another judged folder than this local build's source is refused."""
    path = folder / AGREEMENT_FILE
    if not path.is_file():
        return None
    remeasure = f"measure it with `vlfeedback agreement --judge ANNOTATED --human LABELS --out {path.name}`"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        overall = record["results"]["overall"] if "results" in record else record["overall"]
        measured = {
            "agreement": float(overall["agreement"]),
            "low": float(overall["ci95"][0]),
            "high": float(overall["ci95"][1]),
            "pairs": int(overall["pairs"]),
            "ties": int(overall["human_ties"]) + int(overall["judge_ties"]),
        }
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise UserError(
            f"{path} is not the output of `vlfeedback agreement --out` with an overall agreement ({err!r}); "
            f"{remeasure} or remove it"
        ) from err
    try:
        labels, judged = record["labels"], record["judged"]
        cited = {
            "labels_file": str(labels["file"]),
            "labels_sha256": str(labels["sha256"]),
            "labels_count": int(labels["count"]),
            "judged_folder": str(judged["folder"]),
            "judged_file": str(judged["file"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{path} does not say which labels and judged folder it was measured on (missing {err}), so the card "
            f"cannot cite it: {remeasure} (or remove it)"
        ) from err
    source = (report or {}).get("source")
    if (report or {}).get("local") and source not in (cited["judged_folder"], cited["judged_file"]):
        raise UserError(
            f"{path} was measured on the judged folder {cited['judged_folder']!r}, but this release was built from "
            f"{source!r}: {remeasure.replace('ANNOTATED', str(source))} (or remove it)"
        )
    cited["citation"] = (
        f"labels `{cited['labels_file']}` (sha256 {cited['labels_sha256'][:12]}…, "
        f"{cited['labels_count']:,} labels) against `{cited['judged_folder']}/{cited['judged_file']}`"
    )
    return measured | cited | {"labels": measured["pairs"] + measured["ties"]}


def dataset_infos(folder: Path, report: dict) -> DatasetInfosDict:
    """Per config: features, and rows and bytes per split, as ``datasets``' ``push_to_hub`` records them (bytes:
    the Parquet data's uncompressed size; download size: the Parquet files' size)."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    infos = {}
    for config, splits in report["splits"].items():
        split_dict = SplitDict()
        files = config_files(folder, config, splits)
        for split in sorted(splits):
            metadata = [pq.ParquetFile(p).metadata for p in files if p.name.startswith(f"{split}-")]
            num_bytes = sum(m.row_group(i).total_byte_size for m in metadata for i in range(m.num_row_groups))
            split_dict.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=sum(m.num_rows for m in metadata)))
        infos[config] = DatasetInfo(
            features=Features.from_arrow_schema(pq.read_schema(files[0])) if files else None,
            splits=split_dict,
            download_size=sum(p.stat().st_size for p in files),
            dataset_size=sum(s.num_bytes for s in split_dict.values()),
        )
    return DatasetInfosDict(infos)


def dataset_facts(folder: Path) -> dict:
    """Everything the card states, computed from the folder; writes the figures it shows into ``assets/``."""
    missing = [name for name in ("build_report.json", "pairing_policies.json") if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} is not a folder written by `vlfeedback build` (no {', '.join(missing)})")
    report = json.loads((folder / "build_report.json").read_text())
    policies = json.loads((folder / "pairing_policies.json").read_text())
    judges = read_judge(folder)
    assets = folder / ASSETS_DIR
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir()
    files = {config: config_files(folder, config, splits) for config, splits in report["splits"].items()}
    responses = rating_table(files["raw"])
    ratings = rating_distributions(responses)
    plots = {
        aspect: rating_distribution_plot(aspect, counts, assets / f"ratings-{slug(aspect)}.png")
        .relative_to(folder)
        .as_posix()
        for aspect, counts in ratings.items()
    }
    pair_configs = [config for config in report["splits"] if config not in ("raw", JUDGEMENTS_CONFIG)]
    example_config = DEFAULT_CONFIG if DEFAULT_CONFIG in files else pair_configs[0]
    rated = {aspect: sum(counts.values()) for aspect, counts in ratings.items()}
    return {
        "folder": folder,
        "report": report,
        "policies": policies,
        "raw_rows": sum(report["splits"]["raw"].values()),
        "largest_config_rows": max(sum(splits.values()) for splits in report["splits"].values()),
        "descriptions": {config: policy_description(record["policy"]) for config, record in policies.items()},
        "judge_statement": judge_statement(report),
        "sources": source_counts(files["raw"]),
        "ratings": ratings,
        "rating_shares": {
            aspect: {label: 100 * n / (rated[aspect] or 1) for label, n in counts.items()}
            for aspect, counts in ratings.items()
        },
        "plots": plots,
        "models": model_scores(responses),
        "margins": {config: mean_margin(files[config]) for config in pair_configs},
        "schemas": {
            "raw": schema_of(files["raw"]),
            example_config: schema_of(files[example_config]),
        },
        "example_config": example_config,
        "example": example_row(files[example_config], assets),
        "judges": judges,
        "judge_models": sorted({judge["model"] for judge in judges or []}),
        "origin": release_origin(report, judges),
        "agreement": read_agreement(folder, report),
        "pool": read_pool(folder),
        "judgements_rows": sum(report["splits"].get(JUDGEMENTS_CONFIG, {}).values()),
    }


ORIGIN_TAGS: dict[str, tuple[str, ...]] = {
    "original": ("ai-feedback", "gpt-4v", "silkie"),
    "pipeline": ("ai-feedback",),
    "sample": ("synthetic",),
    "unknown": (),
}
"""Tags that are true of a release only given its origin (``gpt-4v``: the original release's judge)."""


def default_pretty_name(facts: dict) -> str:
    """The card's title when ``--pretty-name`` is not given: VLFeedback only for the original release."""
    if facts["origin"] == "original":
        return "VLFeedback"
    if facts["origin"] == "sample":
        return "VLFeedback kit synthetic sample"
    return f"{facts['report'].get('source_name') or facts['folder'].name} (VLFeedback format)"


def card_data(facts: dict, license: str | None = None, pretty_name: str | None = None) -> DatasetCardData:
    """The card's YAML metadata: license, tasks, size, tags, the ``configs`` block (``pairs`` is the default) and
    ``dataset_info`` (features, rows and bytes per config and split), written by ``datasets`` itself."""
    data = DatasetCardData(
        license=license,
        language="en",
        pretty_name=pretty_name,
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        multilinguality="monolingual",
        task_categories=["image-text-to-text", "visual-question-answering"],
        size_categories=size_category(facts["largest_config_rows"]),
        tags=["dpo", "preference", "vision-language", "vlfeedback", *ORIGIN_TAGS[facts["origin"]]],
        configs=configs_block(facts["folder"], facts["report"]),
    )
    dataset_infos(facts["folder"], facts["report"]).to_dataset_card_data(data)
    return data


def render_dataset_card(
    folder: Path,
    repo_id: str | None = None,
    revision: str | None = None,
    changelog: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
) -> DatasetCard:
    """Render the card of a built folder (README.md content with YAML metadata); writes its figures to ``assets/``.

    ``repo_id`` and ``revision`` make the loading snippets point at a Hub release (default: an ``ORG/NAME``
    placeholder, the folder not being published yet);
    ``changelog`` is the markdown of the changelog entries, newest first (default: a not-published-yet note);
    ``license`` and ``pretty_name`` are the publisher's (``--license``, ``--pretty-name``): by default the original
    release's licence and name for the original release, and no licence for any other.
    """
    folder = Path(folder)
    facts = dataset_facts(folder)
    license = license or (ORIGINAL_LICENSE if facts["origin"] == "original" else None)
    pretty_name = pretty_name or default_pretty_name(facts)
    return DatasetCard.from_template(
        card_data(facts, license, pretty_name),
        template_path=str(TEMPLATE),
        license=license,
        license_flag=license is not None and not (facts["origin"] == "original" and license == ORIGINAL_LICENSE),
        pretty_name=pretty_name,
        aspects=ASPECTS,
        repo_id=repo_id,
        load_target=repo_id or UNPUBLISHED_TARGET,
        revision=revision,
        changelog=changelog,
        paper_judge=PAPER_JUDGE,
        agreement_file=AGREEMENT_FILE,
        preview_chars=TEXT_PREVIEW_CHARS,
        citation=CITATION.read_text(encoding="utf-8").strip(),
        **facts,
    )


def write_dataset_card(folder: Path) -> Path:
    """Render a built folder's card into ``folder/README.md`` (what ``vlfeedback build`` and ``pairs`` call)."""
    path = folder / "README.md"
    render_dataset_card(folder).save(path)
    return path
