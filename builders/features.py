"""The VLFeedback data model: every column of every config is declared here and nowhere else."""

from __future__ import annotations

from datasets import Features, Image, List, Value

ASPECTS: tuple[str, ...] = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
"""The three GPT-4V rating aspects, in the paper's order."""

RATING_RANGE: tuple[int, int] = (1, 5)

ANNOTATION = {"Rating": Value("int8"), "Rationale": Value("string")}
"""One aspect's judgement: ``Rating`` is 1–5, or null when the judge's string did not parse."""

COMPLETION = {
    "model": Value("string"),
    "response": Value("string"),
    "annotations": {aspect: ANNOTATION for aspect in ASPECTS},
}

IMAGE_COLUMNS: tuple[str, ...] = ("image", "images")
"""The columns holding image bytes; always the last of a schema, so that in every Parquet row group the small
columns are adjacent and a reader of footers and small columns (``inspect``, the changelog) never touches them."""

RAW_FEATURES = Features(
    {
        "id": Value("string"),
        "source": Value("string"),
        "prompt": Value("string"),
        "models": List(Value("string")),
        "completions": List(COMPLETION),
        "image": Image(),
    }
)
"""The ``raw`` config: one row per instruction, as published, typed; ``image`` holds the original JPEG bytes."""

GENERATION = {
    "kind": Value("string"),
    "model": Value("string"),
    "adapter": Value("string"),
    "dtype": Value("string"),
    "endpoint": Value("string"),
    "max_new_tokens": Value("int32"),
    "temperature": Value("float64"),
    "top_p": Value("float64"),
}
"""How a pool member generated one response (``vlfeedback decode``): local (adapter, dtype) or endpoint (host)."""

JUDGEMENT_FEATURES = Features(
    {
        "id": Value("string"),
        "judge": {
            "model": Value("string"),
            "template_sha256": Value("string"),
            "outcome": Value("string"),
            "attempts": Value("int32"),
            "permutation": List(Value("int32")),
            "raw_reply": Value("string"),
            "usage": {"prompt_tokens": Value("int64"), "completion_tokens": Value("int64")},
            "cost_usd": Value("float64"),
            "key": Value("string"),
        },
        "completions": List({"model": Value("string"), "generation": GENERATION}),
    }
)
"""The ``judgements`` config (releases made by the AI-feedback pipeline): per ``raw`` id, the judge's record — raw
reply, the order the responses were shown in, attempts, usage, cost — and each completion's generation settings, so
a release can be audited and re-parsed."""

CONTENT_PART = {"type": Value("string"), "text": Value("string")}
MESSAGE = {"role": Value("string"), "content": List(CONTENT_PART)}
RATINGS = {aspect: Value("int8") for aspect in ASPECTS}

PAIR_FEATURES = Features(
    {
        "id": Value("string"),
        "source": Value("string"),
        "prompt": List(MESSAGE),
        "chosen": List(MESSAGE),
        "rejected": List(MESSAGE),
        "chosen_model": Value("string"),
        "rejected_model": Value("string"),
        "chosen_ratings": RATINGS,
        "rejected_ratings": RATINGS,
        "chosen_score": Value("float64"),
        "rejected_score": Value("float64"),
        "margin": Value("float64"),
        "images": List(Image()),
    }
)
"""A pairing config: one row per preference pair, in TRL's conversational vision format, with provenance.

Scores and ``margin`` are float64 and ``margin`` is the very value the pairing policy compared with ``min_margin``
(``vlfeedback_kit.builders.pairing``), so ``margin >= t`` on the loaded column keeps exactly the pairs a policy with
``min_margin=t`` keeps."""

SOURCE_PREFIXES: dict[str, str] = {
    "llava-med": "LLaVA-Med",
    "llavamed": "LLaVA-Med",
    "llavar": "LLaVAR",
    "llava": "LLaVA",
    "svit": "SVIT",
    "lrv": "LRV",
    "comvint": "ComVint",
    "pmc-vqa": "PMC-VQA",
    "pmcvqa": "PMC-VQA",
    "m3it": "M3IT",
    "pca-eval": "PCA-EVAL",
    "pca": "PCA-EVAL",
    "rtvlm": "RTVLM",
    "vlsafe": "VLSafe",
}
"""Known id prefixes of the original release (and the kit's own sources) mapped to source names."""

_PREFIXES_LONGEST_FIRST = sorted(SOURCE_PREFIXES, key=len, reverse=True)


def source_of(row_id: str) -> str:
    """The source encoded in an id (``svit-conversation-1219`` → ``SVIT``); unknown prefixes pass through."""
    lowered = row_id.lower()
    for prefix in _PREFIXES_LONGEST_FIRST:
        if lowered.startswith(prefix) and (len(lowered) == len(prefix) or not lowered[len(prefix)].isalpha()):
            return SOURCE_PREFIXES[prefix]
    head = row_id.split("-", 1)[0].split("_", 1)[0]
    return head or "unknown"
