"""VLFeedback as a ``datasets`` builder class, for users who want to build a config in-process.

The published form of the dataset is Parquet with ``configs`` declared in the README (``datasets`` ≥ 4 refuses
loading scripts, and the Hub's viewer reads Parquet). This class is the same pipeline behind ``datasets``' builder
API — instantiate it with a source, ``download_and_prepare()``, ``as_dataset()``::

    from vlfeedback_kit.builders.builder import VLFeedback

    builder = VLFeedback(config_name="best-vs-worst", source="sample_release", min_margin=1.0)
    builder.download_and_prepare()
    pairs = builder.as_dataset(split="train")

Every :class:`~vlfeedback_kit.builders.pairing.PairingPolicy` option is a config field, so any policy is one keyword
away.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.builder import Key

from vlfeedback_kit.builders.build import RejectLog, batched, canonical_rows, split_of
from vlfeedback_kit.builders.features import PAIR_FEATURES, RAW_FEATURES
from vlfeedback_kit.builders.pairing import PRESETS, PairingPolicy, materialize_pairs, response_table, select_pairs
from vlfeedback_kit.builders.sources import open_source
from vlfeedback_kit.errors import UserError

logger = logging.getLogger(__name__)
_POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(PairingPolicy))


@dataclass
class VLFeedbackConfig(datasets.BuilderConfig):
    """A config: ``level`` raw (one row per instruction) or pairs, the input, and the pairing policy's options."""

    level: str = "pairs"
    source: str | None = None
    revision: str | None = None
    strategy: str = "all-pairs"
    aggregation: str = "mean"
    weights: tuple[float, float, float] | None = None
    min_margin: float = 0.0
    max_pairs_per_prompt: int | None = None
    max_length_ratio: float | None = None
    seed: int = 42
    eval_fraction: float = 0.0
    eval_seed: int = 42
    max_reject_rate: float = 0.05
    verify_images: str = "header"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in ("raw", "pairs"):
            raise ValueError(f"level must be 'raw' or 'pairs', got {self.level!r}")
        self.policy  # noqa: B018 - validates the pairing options at construction

    @property
    def policy(self) -> PairingPolicy:
        """The pairing policy this config's options describe."""
        return PairingPolicy(**{name: getattr(self, name) for name in _POLICY_FIELDS})


def _preset_config(name: str, policy: PairingPolicy) -> VLFeedbackConfig:
    return VLFeedbackConfig(name=name, description=f"preference pairs: {policy.to_dict()}", **policy.to_dict())


class VLFeedback(datasets.GeneratorBasedBuilder):
    """VLFeedback: GPT-4V-rated responses of 4 VLMs per image instruction, and preference pairs built from them."""

    BUILDER_CONFIG_CLASS = VLFeedbackConfig
    BUILDER_CONFIGS = [
        VLFeedbackConfig(name="raw", level="raw", description="one row per instruction with its rated responses"),
        *(_preset_config(name, policy) for name, policy in PRESETS.items()),
    ]
    DEFAULT_CONFIG_NAME = "pairs"
    DEFAULT_WRITER_BATCH_SIZE = 100

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=__doc__,
            features=RAW_FEATURES if self.config.level == "raw" else PAIR_FEATURES,
            homepage="https://vlf-silkie.github.io",
            license="cc-by-nc-4.0",
            citation="@article{li2024vlfeedback, title={VLFeedback: A Large-Scale AI Feedback Dataset for Large "
            "Vision-Language Models Alignment}, author={Li, Lei and others}, journal={EMNLP}, year={2024}}",
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        source = self.config.source or self.config.data_dir
        if not source:
            raise UserError("VLFeedback needs `source=` (a release folder, Parquet file/folder or Hub dataset id)")
        splits = [datasets.Split.TRAIN] + ([datasets.Split.TEST] if self.config.eval_fraction > 0 else [])
        return [datasets.SplitGenerator(name=s, gen_kwargs={"source": source, "split": str(s)}) for s in splits]

    def _generate_examples(self, source: str, split: str):
        config = self.config
        policy = config.policy if config.level == "pairs" else None
        with tempfile.TemporaryDirectory() as scratch:
            report = RejectLog(Path(scratch) / "rejects.jsonl")
            reader = open_source(source, config.revision)
            index = 0
            for batch in batched(canonical_rows(reader.records(), report, config.verify_images), 256):
                rows = [
                    r
                    for r, s in zip(batch, split_of([r["id"] for r in batch], config.eval_fraction, config.eval_seed))
                    if s == split
                ]
                if policy is not None and rows:
                    table = pa.Table.from_pylist(rows, schema=RAW_FEATURES.arrow_schema)
                    rows = materialize_pairs(
                        table, select_pairs(response_table(table, policy.seed), policy)
                    ).to_pylist()
                for row in rows:
                    yield Key(0, index), row
                    index += 1
            report.close()
            if report.rejected:
                logger.warning(
                    "VLFeedback: %d of %d input rows rejected: %s", report.rejected, report.read, report.reasons
                )
            if report.read and report.rejected / report.read > config.max_reject_rate:
                raise UserError(
                    f"{report.rejected} of {report.read} rows rejected ({report.reasons}), above max_reject_rate="
                    f"{config.max_reject_rate}; use `vlfeedback build` to get the rejects file with reasons"
                )
