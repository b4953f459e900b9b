"""A persistent cache of reference log-probs for VLM DPO, keyed by pair and by what determines the numbers.

TRL 1.16 refuses ``precompute_ref_log_probs`` for image data, so every step pays a reference forward. The kit
computes the reference log-probs once — in one batched, gradient-free pass before training, or on the fly the first
time a pair is seen — and reuses them across epochs and runs. A cache file belongs to a *namespace*: the dataset
(the content of the data files it reads, or the Hub commit), the model (its content or commit, how it is loaded:
dtype, attention implementation, quantization), the autocast precision, the processor settings, ``max_length`` and
the TRL and transformers versions; change any of them and a new file is used. Pairs are keyed by ``pair_key`` (see
:func:`pair_key`).

Before the first step that trains on cached values, the trainer recomputes that batch's reference log-probs live and
compares (:data:`TOLERANCE`); a larger difference stops the run (:class:`ReferenceCacheMismatch`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import atomic_write

CACHE_FOLDER = ".ref_logps"
TOLERANCE = {"float32": 0.01, "float16": 0.1, "bfloat16": 0.25}
"""Largest accepted difference, in nats, between a cached and a live reference log-prob (one sequence's sum), per
compute dtype: a sum over hundreds of tokens carries that dtype's rounding, and batch composition can change it. At
beta 0.1 a 0.25-nat error moves a pair's DPO logit by 0.025; a false hit (another model, image or prompt) moves it by
whole nats. Measured on the CPU with the tiny Qwen2-VL (training batch 2 or 4 against a reference pass of 8 or 16):
0.0 in float32 and in bfloat16 autocast; BENCHMARKS.md's earlier bfloat16 comparisons differed by 0.010-0.024."""


class ReferenceCacheMismatch(UserError):
    """The step-0 self-check found cached reference log-probs that a live forward does not reproduce."""


def image_digest(images: object) -> str:
    """A digest of a row's undecoded images (``{"bytes", "path"}`` dicts, one or a list)."""
    items = images if isinstance(images, list) else [images] if images else []
    digest = hashlib.sha256()
    for image in items:
        digest.update(image.get("bytes") or str(image.get("path")).encode())
    return digest.hexdigest()


def pair_key(example: dict) -> str:
    """A stable key of one preference pair: its id and models when present, else its texts and image bytes."""
    if example.get("id") is not None and example.get("chosen_model") is not None:
        material = [example["id"], example["chosen_model"], example["rejected_model"]]
    else:
        images = example.get("images", example.get("image"))
        material = [example["prompt"], example["chosen"], example["rejected"], image_digest(images)]
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def namespace(parts: dict) -> str:
    """A short hash of everything the reference log-probs depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def default_cache_dir(dataset_name: str | None) -> Path:
    """Beside the data for a local dataset folder; under ``$HF_HOME/vlfeedback`` for a Hub dataset."""
    if dataset_name and Path(dataset_name).is_dir():
        return Path(dataset_name) / CACHE_FOLDER
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "vlfeedback" / CACHE_FOLDER / (dataset_name or "unnamed").replace("/", "--")


class RefLogpCache:
    """pair_key → (reference chosen log-prob, reference rejected log-prob), persisted as one Parquet file."""

    def __init__(self, path: Path, parts: dict) -> None:
        self.path = path
        self.parts = parts
        self.values: dict[str, tuple[float, float]] = {}
        self.unshared: dict[str, tuple[float, float]] = {}  # added here since the last merge across processes
        self.hits = self.misses = self.sent = 0
        if path.is_file():
            table = pq.read_table(path)
            self.values = dict(
                zip(
                    table.column("pair_key").to_pylist(),
                    zip(table.column("ref_chosen_logps").to_pylist(), table.column("ref_rejected_logps").to_pylist()),
                )
            )

    @classmethod
    def open(cls, folder: Path, parts: dict) -> RefLogpCache:
        """The cache file of ``parts``' namespace under ``folder`` (created on save)."""
        return cls(folder / f"{namespace(parts)}.parquet", parts)

    def lookup(self, keys: list[str]) -> tuple[list[float], list[float]] | None:
        """Both columns for ``keys`` when every key is cached, else None (counted as hits or misses)."""
        if all(k in self.values for k in keys):
            self.hits += len(keys)
            return [self.values[k][0] for k in keys], [self.values[k][1] for k in keys]
        self.misses += len(keys)
        return None

    def add(self, keys: list[str], chosen: list[float], rejected: list[float]) -> None:
        """Record reference log-probs for ``keys``."""
        entries = dict(zip(keys, zip(chosen, rejected)))
        self.values.update(entries)
        self.unshared.update(entries)

    def take_unshared(self) -> dict[str, tuple[float, float]]:
        """The entries this process added since the last call (what a merge across processes sends), counted."""
        entries, self.unshared = self.unshared, {}
        self.sent += len(entries)
        return entries

    def merge(self, parts: list[dict[str, tuple[float, float]]]) -> None:
        """Add every process's new entries (as received from a merge), not to be sent on again."""
        for part in parts:
            self.values.update(part)

    def save(self) -> None:
        """Write the file atomically, with the namespace parts as metadata for humans."""
        keys = list(self.values)
        table = pa.table(
            {
                "pair_key": keys,
                "ref_chosen_logps": [self.values[k][0] for k in keys],
                "ref_rejected_logps": [self.values[k][1] for k in keys],
            }
        ).replace_schema_metadata({"vlfeedback.ref_cache": json.dumps(self.parts, sort_keys=True, default=str)})
        with atomic_write(self.path) as temp:
            pq.write_table(table, temp)
