"""Preference-pair construction from instruction-level ratings: recorded, seeded, vectorised policies.

A :class:`PairingPolicy` says which response pairs of an instruction become DPO pairs. :func:`select_pairs` applies
it to a batch of ``raw`` rows with numpy over all candidate pairs at once, and :func:`materialize_pairs` turns the
selection into rows ready for TRL's ``DPOTrainer`` (``images`` / ``prompt`` / ``chosen`` / ``rejected`` in the
conversational vision format) with provenance columns. Both are pure functions of their inputs.

Eligibility of a candidate pair (two responses of one instruction), in the order the counts are kept:
  1. both sides have every rating the aggregation uses (else ``skipped_null`` — the paper skips unparseable ratings);
  2. the aggregate scores differ (else ``dropped_ties`` — the paper drops exact ties);
  3. the response texts differ after trimming whitespace (else ``dropped_identical``);
  4. ``margin >= min_margin`` (else ``dropped_margin``);
  5. chosen words ≤ ``max_length_ratio`` × rejected words, when set (else ``dropped_length``).
The strategy then picks among eligible pairs (``not_selected`` counts the rest) and ``max_pairs_per_prompt`` keeps
the widest margins (``dropped_cap``). ``candidates`` = the sum of all those counts + ``pairs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlfeedback_kit.builders.features import ASPECTS, PAIR_FEATURES

STRATEGIES: tuple[str, ...] = ("all-pairs", "best-vs-worst", "best-vs-random", "best-vs-all")
AGGREGATIONS: tuple[str, ...] = ("mean", "min", "weighted", *ASPECTS)
COUNT_KEYS: tuple[str, ...] = (
    "instructions",
    "instructions_with_pairs",
    "candidates",
    "skipped_null",
    "dropped_ties",
    "dropped_identical",
    "dropped_margin",
    "dropped_length",
    "not_selected",
    "dropped_cap",
    "pairs",
)
SHARED_IMAGE_TYPE = pa.list_(pa.struct([("bytes", pa.dictionary(pa.int32(), pa.binary())), ("path", pa.string())]))
PAIR_ARROW_SCHEMA = PAIR_FEATURES.arrow_schema.set(
    PAIR_FEATURES.arrow_schema.get_field_index("images"), pa.field("images", SHARED_IMAGE_TYPE)
)
"""The Arrow schema of materialised pairs: ``PAIR_FEATURES`` with the image bytes as a dictionary over the batch's
images, so the ~5 pairs of an instruction share one copy in memory and in Parquet (readers decode it transparently)."""
_ASPECT_ALIASES = {a.lower().replace(" ", "_"): a for a in ASPECTS} | {a.lower(): a for a in ASPECTS}


@dataclass(frozen=True)
class PairingPolicy:
    """How response pairs of one instruction become preference pairs. The defaults are the paper's rule."""

    strategy: str = field(
        default="all-pairs",
        metadata={"help": f"Which pairs to keep per instruction: {', '.join(STRATEGIES)}."},
    )
    aggregation: str = field(
        default="mean",
        metadata={"help": "Score of a response: mean, min or weighted over the three aspects, or one aspect's name."},
    )
    weights: tuple[float, float, float] | None = field(
        default=None,
        metadata={"help": f"Per-aspect weights for aggregation=weighted, in the order {', '.join(ASPECTS)}."},
    )
    min_margin: float = field(default=0.0, metadata={"help": "Keep pairs whose score gap is at least this."})
    max_pairs_per_prompt: int | None = field(
        default=None, metadata={"help": "Keep at most this many pairs per instruction (widest margins first)."}
    )
    max_length_ratio: float | None = field(
        default=None,
        metadata={"help": "Drop pairs whose chosen response has more than this × the rejected one's words."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random choices (best-vs-random, tie-breaks)."})

    def __post_init__(self) -> None:
        aggregation = _ASPECT_ALIASES.get(self.aggregation.lower(), self.aggregation)
        object.__setattr__(self, "aggregation", aggregation)
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; set `strategy` to one of {', '.join(STRATEGIES)}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {self.aggregation!r}; set `aggregation` to one of mean, min, weighted, "
                f"or an aspect ({', '.join(_ASPECT_ALIASES)})"
            )
        if aggregation == "weighted":
            if self.weights is None or len(self.weights) != len(ASPECTS):
                raise ValueError(
                    f"aggregation=weighted needs `weights` with {len(ASPECTS)} numbers ({', '.join(ASPECTS)})"
                )
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("`weights` must be non-negative with a positive sum")
        elif self.weights is not None:
            raise ValueError("`weights` is only used with aggregation=weighted; remove it or set aggregation=weighted")
        if self.min_margin < 0:
            raise ValueError("`min_margin` must be >= 0")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError("`max_pairs_per_prompt` must be >= 1 (or unset for no cap)")
        if self.max_length_ratio is not None and self.max_length_ratio < 1:
            raise ValueError("`max_length_ratio` must be >= 1 (or unset for no length filter)")

    def to_dict(self) -> dict:
        """The policy as plain JSON-able data (the machine-readable record of a config)."""
        data = dataclasses.asdict(self)
        data["weights"] = list(self.weights) if self.weights is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PairingPolicy:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown pairing option(s) {unknown}; valid options: {sorted(names)}")
        data = dict(data)
        if data.get("weights") is not None:
            data["weights"] = tuple(data["weights"])
        return cls(**data)

    def fingerprint(self) -> str:
        """A short stable hash of the policy, recorded beside its counts."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def aspects_used(self) -> tuple[int, ...]:
        """Indices into ASPECTS of the ratings the aggregation reads (a null in any of them skips the response)."""
        if self.aggregation in ASPECTS:
            return (ASPECTS.index(self.aggregation),)
        if self.aggregation == "weighted":
            return tuple(i for i, w in enumerate(self.weights) if w > 0)
        return tuple(range(len(ASPECTS)))


PRESETS: dict[str, PairingPolicy] = {
    "pairs": PairingPolicy(),
    "best-vs-worst": PairingPolicy(strategy="best-vs-worst"),
    "best-vs-random": PairingPolicy(strategy="best-vs-random"),
    "best-vs-all": PairingPolicy(strategy="best-vs-all"),
    "margin-1": PairingPolicy(min_margin=1.0),
    "length-balanced": PairingPolicy(max_length_ratio=1.5),
}
"""Named policies for ``--pairs NAME``; ``pairs`` is the paper's rule and always built."""


def parse_policy_spec(spec: str) -> tuple[str, PairingPolicy]:
    """Parse ``NAME`` (a preset) or ``NAME:key=value,key=value`` (e.g. ``bvw:strategy=best-vs-worst,min_margin=1``)."""
    name, _, options = spec.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"bad pairing config name {name!r} in {spec!r}: use letters, digits, '-' and '_'")
    if not options:
        if name not in PRESETS:
            raise ValueError(
                f"unknown pairing preset {name!r}; use one of {', '.join(PRESETS)} or NAME:key=value,... "
                "(keys: strategy, aggregation, weights, min_margin, max_pairs_per_prompt, max_length_ratio, seed)"
            )
        return name, PRESETS[name]
    data: dict[str, object] = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad pairing option {item!r} in {spec!r}: write key=value")
        if key.strip() in data:
            raise ValueError(f"pairing option {key.strip()!r} is given twice in {spec!r}: keep one")
        data[key.strip()] = _parse_option_value(key.strip(), value.strip())
    return name, PairingPolicy.from_dict(data)


def _parse_option_value(key: str, value: str) -> object:
    if key == "weights":
        return tuple(float(w) for w in value.replace("/", " ").replace(";", " ").split())
    if key in ("min_margin", "max_length_ratio"):
        return float(value)
    if key in ("max_pairs_per_prompt", "seed"):
        return int(value)
    return value


@dataclass
class ResponseTable:
    """The per-response arrays of a batch of instructions, padded to (rows, max responses)."""

    ratings: np.ndarray  # float64 (N, K, len(ASPECTS)), NaN where null or padding
    flat_index: np.ndarray  # int64 (N, K): index into the flattened completions, -1 for padding
    counts: np.ndarray  # int64 (N,): responses per instruction
    text_code: np.ndarray  # int64 (N, K): equal codes ⇔ identical trimmed response texts
    words: np.ndarray  # int64 (N, K): whitespace-separated words per response
    row_keys: np.ndarray  # uint64 (N,): seeded per-instruction hash for random choices


def response_table(raw: pa.Table, seed: int = 42) -> ResponseTable:
    """Extract ratings, identities and lengths of every response of a ``raw`` batch as padded numpy arrays."""
    completions = raw.column("completions").combine_chunks()
    offsets = completions.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    counts = np.diff(offsets)
    values = completions.values.slice(completions.offsets[0].as_py(), int(offsets[-1]))
    width = int(counts.max(initial=0))
    valid = np.arange(width)[None, :] < counts[:, None]
    flat_index = np.where(valid, offsets[:-1, None] + np.arange(width)[None, :], -1)
    take = np.where(valid, flat_index, 0)

    annotations = values.field("annotations")
    flat_ratings = (
        np.stack(
            [
                pc.fill_null(annotations.field(aspect).field("Rating").cast(pa.float64()), np.nan).to_numpy()
                for aspect in ASPECTS
            ],
            axis=-1,
        )
        if len(values)
        else np.zeros((0, len(ASPECTS)))
    )
    ratings = np.where(valid[..., None], flat_ratings[take] if len(values) else np.nan, np.nan)

    responses = pc.utf8_trim_whitespace(pc.fill_null(values.field("response"), ""))
    codes = responses.dictionary_encode().indices.to_numpy().astype(np.int64)
    words = pc.count_substring_regex(responses, r"\S+").to_numpy().astype(np.int64)
    text_code = np.where(valid, codes[take] if len(values) else -1, -1)
    word_counts = np.where(valid, words[take] if len(values) else 0, 0)
    ids = raw.column("id").to_pylist()
    row_keys = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )
    return ResponseTable(ratings, flat_index, counts, text_code, word_counts, row_keys)


def _score_parts(ratings: np.ndarray, policy: PairingPolicy) -> tuple[np.ndarray, float]:
    """Numerator per response (N, K) and the common denominator of the aggregate score; NaN where a rating is null.

    Scores are ``numerator / denominator`` and margins ``(numerator_a - numerator_b) / denominator``: for integer
    ratings both numerators are exact, so a margin is the correctly rounded float64 of the true gap (a gap of 2 is
    exactly 2.0, a gap of 4/3 is ``4 / 3``) and compares with a user's threshold as the true value would.
    """
    used = ratings[..., list(policy.aspects_used)]
    if policy.aggregation == "min":
        return used.min(axis=-1), 1.0
    if policy.aggregation == "weighted":
        weights = np.array([policy.weights[i] for i in policy.aspects_used])
        return (used * weights).sum(axis=-1), float(weights.sum())
    return used.sum(axis=-1), float(used.shape[-1])


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread uint64 per input, vectorised."""
    with np.errstate(over="ignore"):
        z = keys + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass
class PairSelection:
    """Selected pairs of a batch: row index, flattened completion indices of both sides, scores; plus counts."""

    row: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_score: np.ndarray
    rejected_score: np.ndarray
    margin: np.ndarray
    """Score gap chosen − rejected (always > 0), float64: the value compared with ``min_margin``."""
    counts: dict[str, int]


def select_pairs(responses: ResponseTable, policy: PairingPolicy) -> PairSelection:
    """Apply a pairing policy to every candidate pair of a batch at once; deterministic for the policy's seed."""
    n_rows, width = responses.flat_index.shape
    combos = np.array(list(combinations(range(width), 2)), dtype=np.int64).reshape(-1, 2)
    first, second = combos[:, 0], combos[:, 1]
    numerator, denominator = _score_parts(responses.ratings, policy)
    scores = numerator / denominator

    exists = second[None, :] < responses.counts[:, None]
    s_first, s_second = numerator[:, first], numerator[:, second]
    nonnull = exists & ~np.isnan(s_first) & ~np.isnan(s_second)
    with np.errstate(invalid="ignore"):
        diff = (s_first - s_second) / denominator
        untied = nonnull & (np.abs(s_first - s_second) > 1e-9 * denominator)
    distinct = untied & (responses.text_code[:, first] != responses.text_code[:, second])
    first_wins = diff > 0
    chosen_k = np.where(first_wins, first[None, :], second[None, :])
    rejected_k = np.where(first_wins, second[None, :], first[None, :])
    rows = np.arange(n_rows)[:, None]
    margin = np.where(distinct, np.abs(diff), 0.0)
    wide = distinct & (margin >= policy.min_margin)
    balanced = wide
    if policy.max_length_ratio is not None:
        chosen_words = responses.words[rows, chosen_k]
        rejected_words = np.maximum(responses.words[rows, rejected_k], 1)
        balanced = wide & (chosen_words <= policy.max_length_ratio * rejected_words)

    selected = _apply_strategy(balanced, scores, chosen_k, rejected_k, combos, responses, policy)
    kept = _apply_cap(selected, margin, combos, responses, policy)

    row_idx, combo_idx = np.nonzero(kept)
    chosen = responses.flat_index[row_idx, chosen_k[row_idx, combo_idx]]
    rejected = responses.flat_index[row_idx, rejected_k[row_idx, combo_idx]]
    counts = {
        "instructions": int(n_rows),
        "instructions_with_pairs": int(kept.any(axis=1).sum()),
        "candidates": int(exists.sum()),
        "skipped_null": int((exists & ~nonnull).sum()),
        "dropped_ties": int((nonnull & ~untied).sum()),
        "dropped_identical": int((untied & ~distinct).sum()),
        "dropped_margin": int((distinct & ~wide).sum()),
        "dropped_length": int((wide & ~balanced).sum()),
        "not_selected": int((balanced & ~selected).sum()),
        "dropped_cap": int((selected & ~kept).sum()),
        "pairs": int(kept.sum()),
    }
    return PairSelection(
        row=row_idx.astype(np.int64),
        chosen=chosen.astype(np.int64),
        rejected=rejected.astype(np.int64),
        chosen_score=scores[row_idx, chosen_k[row_idx, combo_idx]],
        rejected_score=scores[row_idx, rejected_k[row_idx, combo_idx]],
        margin=margin[row_idx, combo_idx],
        counts=counts,
    )


def _pair_keys(responses: ResponseTable, combos: np.ndarray, policy: PairingPolicy) -> np.ndarray:
    """A seeded pseudo-random uint64 per (row, candidate pair), independent of batching."""
    salt = _mix(np.arange(len(combos), dtype=np.uint64) + np.uint64(policy.seed))
    return _mix(responses.row_keys[:, None] ^ salt[None, :])


def _apply_strategy(
    eligible: np.ndarray,
    scores: np.ndarray,
    chosen_k: np.ndarray,
    rejected_k: np.ndarray,
    combos: np.ndarray,
    responses: ResponseTable,
    policy: PairingPolicy,
) -> np.ndarray:
    """Mask (N, C) of the eligible pairs the strategy keeps."""
    if policy.strategy == "all-pairs":
        return eligible
    rows = np.arange(len(scores))[:, None]
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isnan(scores), -np.inf, scores), axis=1, initial=-np.inf)
        worst = np.nanmin(np.where(np.isnan(scores), np.inf, scores), axis=1, initial=np.inf)
    chosen_is_best = scores[rows, chosen_k] == best[:, None]
    if policy.strategy == "best-vs-all":
        return eligible & chosen_is_best
    candidates = eligible & chosen_is_best
    if policy.strategy == "best-vs-worst":
        candidates &= scores[rows, rejected_k] == worst[:, None]
    keys = np.where(candidates, _pair_keys(responses, combos, policy), np.iinfo(np.uint64).max)
    pick = np.zeros_like(candidates)
    if candidates.shape[1]:
        choice = keys.argmin(axis=1)
        pick[np.arange(len(scores)), choice] = True
    return pick & candidates


def _apply_cap(
    selected: np.ndarray, margin: np.ndarray, combos: np.ndarray, responses: ResponseTable, policy: PairingPolicy
) -> np.ndarray:
    """Keep at most ``max_pairs_per_prompt`` pairs per row: widest margin first, seeded tie-break."""
    cap = policy.max_pairs_per_prompt
    if cap is None or selected.shape[1] <= cap:
        return selected
    keys = _pair_keys(responses, combos, policy)
    # Order within each row: selected first, then larger margin, then the seeded key.
    order = np.lexsort((keys, -margin, ~selected), axis=1) if selected.size else np.zeros_like(selected, int)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(selected.shape[1])[None, :].repeat(len(selected), 0), axis=1)
    return selected & (rank < cap)


def _messages(role: str, parts_type: pa.Array, parts_text: pa.Array, parts_per_message: int) -> pa.Array:
    """A list<message> column with one message per row, each with ``parts_per_message`` content parts."""
    n_messages = len(parts_type) // parts_per_message
    content_type = PAIR_FEATURES.arrow_schema.field("prompt").type.value_type.field("content").type
    parts = pa.StructArray.from_arrays([parts_type, parts_text], fields=list(content_type.value_type))
    content = pa.ListArray.from_arrays(
        pa.array(np.arange(n_messages + 1, dtype=np.int32) * parts_per_message), parts, type=content_type
    )
    roles = pa.array(np.full(n_messages, role, dtype=object), pa.string())
    message = pa.StructArray.from_arrays([roles, content], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(n_messages + 1, dtype=np.int32)), message)


def materialize_pairs(raw: pa.Table, selection: PairSelection) -> pa.Table:
    """Rows in the ``pairs`` schema (TRL-ready messages + images + provenance) for a selection over ``raw``.

    No image is copied: each pair's image bytes are a dictionary index into ``raw``'s image column.
    """
    n = len(selection.row)
    row = pa.array(selection.row)
    completions = raw.column("completions").combine_chunks()
    start = completions.offsets[0].as_py()
    values = completions.values.slice(start, len(completions.values) - start)
    chosen_idx, rejected_idx = pa.array(selection.chosen), pa.array(selection.rejected)

    image = raw.column("image").combine_chunks()
    image_bytes = image.field("bytes")
    if pa.types.is_dictionary(image_bytes.type):
        image_bytes = image_bytes.dictionary_decode()
    shared_bytes = pa.DictionaryArray.from_arrays(pa.array(selection.row, pa.int32()), image_bytes)
    images = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32)),
        pa.StructArray.from_arrays([shared_bytes, image.field("path").take(row)], names=["bytes", "path"]),
    )
    prompt_text = raw.column("prompt").combine_chunks().take(row)
    interleave = np.empty(2 * n, dtype=np.int64)
    interleave[0::2], interleave[1::2] = n, np.arange(n)
    part_text = pa.concat_arrays([prompt_text, pa.nulls(1, pa.string())]).take(pa.array(interleave))
    part_type = pa.array(np.tile(np.array(["image", "text"], dtype=object), n), pa.string())
    responses = values.field("response")
    text_type = pa.array(np.full(n, "text", dtype=object), pa.string())

    def ratings(index: pa.Array) -> pa.Array:
        annotations = values.field("annotations")
        fields = [annotations.field(a).field("Rating").take(index) for a in ASPECTS]
        return pa.StructArray.from_arrays(fields, names=list(ASPECTS))

    columns = {
        "id": raw.column("id").combine_chunks().take(row),
        "source": raw.column("source").combine_chunks().take(row),
        "images": images,
        "prompt": _messages("user", part_type, part_text, 2),
        "chosen": _messages("assistant", text_type, responses.take(chosen_idx), 1),
        "rejected": _messages("assistant", text_type, responses.take(rejected_idx), 1),
        "chosen_model": values.field("model").take(chosen_idx),
        "rejected_model": values.field("model").take(rejected_idx),
        "chosen_ratings": ratings(chosen_idx),
        "rejected_ratings": ratings(rejected_idx),
        "chosen_score": pa.array(selection.chosen_score, pa.float64()),
        "rejected_score": pa.array(selection.rejected_score, pa.float64()),
        "margin": pa.array(selection.margin, pa.float64()),
    }
    schema = PAIR_ARROW_SCHEMA
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def merge_counts(total: dict[str, int], batch: dict[str, int]) -> dict[str, int]:
    """Add a batch's counts into a running total (in place) and return it."""
    for key in COUNT_KEYS:
        total[key] = total.get(key, 0) + batch.get(key, 0)
    return total
