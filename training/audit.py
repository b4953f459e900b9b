"""Pre-flight audit: what the real processor will make of every row, before any GPU hour is spent.

Counts image tokens per row with the real processor — each image's size is read from its *header* (its pixels are
not decoded) and what an image of that size becomes is measured once per distinct size on a blank probe — and text
tokens from the chat template, then refuses a dataset whose rows ``max_length`` would truncate — naming the rows and
the fix — because a cut inside the image tokens is the "Image features and image tokens do not match" crash, and a cut
inside the answers silently changes what DPO compares. Rows without an image in an image dataset are reported (mixed
batches hang some setups).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np

SIDES = ("chosen", "rejected")


@dataclass
class AuditReport:
    """Per-dataset token statistics and the rows that would be truncated."""

    rows: int
    image_tokens: dict[str, float]
    total_tokens: dict[str, float]
    max_length: int | None
    truncated_rows: list[tuple[int, str, int]] = field(default_factory=list)  # (row, id, tokens)
    image_cut_rows: list[tuple[int, str, int]] = field(default_factory=list)
    rows_without_image: int = 0
    row_tokens: np.ndarray | None = field(default=None, repr=False)  # (rows, 3): prompt, chosen, rejected tokens

    def lengths(self, packed: bool = False) -> list[int]:
        """Per-row sequence length as the trainer pads it: the longer of prompt + chosen and prompt + rejected, or,
        ``packed`` (prompt-prefix sharing), prompt + chosen + 1 + rejected."""
        prompt, chosen, rejected = self.row_tokens.T
        return (prompt + chosen + 1 + rejected if packed else prompt + np.maximum(chosen, rejected)).tolist()

    def to_json(self) -> dict:
        """The report for ``audit.json`` (statistics and offending rows; per-row token counts stay out)."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k != "row_tokens"}

    def summary(self) -> str:
        """A few lines for the training log."""
        return (
            f"audit: {self.rows} rows; image tokens/row min {self.image_tokens['min']:.0f} median "
            f"{self.image_tokens['median']:.0f} max {self.image_tokens['max']:.0f}; tokens/sequence p50 "
            f"{self.total_tokens['p50']:.0f} p95 {self.total_tokens['p95']:.0f} max {self.total_tokens['max']:.0f}; "
            f"max_length {self.max_length}; would truncate {len(self.truncated_rows)} rows "
            f"({len(self.image_cut_rows)} inside image tokens); rows without an image: {self.rows_without_image}"
        )


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"min": 0.0, "median": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def _digest(value: object) -> bytes:
    """A 16-byte key for memo tables (a few hundred thousand entries stay small)."""
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=16).digest()


class _TokenCounter:
    """Text-token counts exactly as TRL's vision collator renders them, memoised: the ~5 pairs of an instruction
    share one prompt and each response appears in ~2 pairs, so most rows cost no template rendering at all."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self._prompts: dict[bytes, int] = {}
        self._answers: dict[bytes, int] = {}

    def _render(self, prompt: list, answer: list | None, images: int) -> dict[str, str]:
        from trl.data_utils import apply_chat_template, prepare_multimodal_messages

        example = {"prompt": prepare_multimodal_messages(prompt, images=[None] * images)}
        if answer is not None:
            example["completion"] = prepare_multimodal_messages(answer)
        return apply_chat_template(example, self.processor)

    def _count(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, prompt: list, images: int) -> int:
        """Tokens of the rendered prompt, with one placeholder token per image."""
        key = _digest([prompt, images])
        if key not in self._prompts:
            self._prompts[key] = self._count(self._render(prompt, None, images)["prompt"])
        return self._prompts[key]

    def answer(self, prompt: list, answer: list, images: int) -> int:
        """Tokens of one rendered answer after ``prompt``."""
        key = _digest([prompt, images, answer])
        if key not in self._answers:
            self._answers[key] = self._count(self._render(prompt, answer, images)["completion"])
        return self._answers[key]


class ImageTokens:
    """Tokens the processor really builds for one image of a given (height, width): measured by running the processor
    on a blank probe image of that size inside a rendered prompt, memoised per size (the pairs of an instruction share
    its image, and datasets repeat sizes). Family- and version-agnostic — wrappers, tile separators, begin/end markers
    and newlines are counted because the processor itself is the reference; no private API, no per-family table."""

    def __init__(self, processor, counter: _TokenCounter | None = None) -> None:
        self.processor = processor
        counter = counter or _TokenCounter(processor)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
        self._prompt = counter._render(messages, None, 1)["prompt"]
        self._text = counter.prompt(messages, 1) - 1  # the rendered prompt without its one image placeholder
        self._sizes: dict[tuple[int, int], int] = {}

    def __call__(self, size: tuple[int, int]) -> int:
        """Tokens one image of ``size`` (height, width) adds to the prompt, placeholder included."""
        if size not in self._sizes:
            from PIL import Image as PILImage

            height, width = size
            probe = PILImage.new("RGB", (width, height))
            real = self.processor(images=[[probe]], text=[self._prompt], add_special_tokens=False)["input_ids"][0]
            self._sizes[size] = len(real) - self._text
        return self._sizes[size]


def audit_dataset(dataset, processor, max_length: int | None, batch_size: int = 256) -> AuditReport:
    """Token counts of every row of a TRL vision preference dataset under ``processor`` and ``max_length``."""
    from datasets import Image, List
    from PIL import Image as PILImage

    image_column = "images" if "images" in dataset.column_names else "image"
    raw = dataset.cast_column(image_column, List(Image(decode=False)) if image_column == "images" else Image(False))
    columns = [c for c in ("id", image_column, "prompt", "chosen", "rejected") if c in raw.column_names]
    counter = _TokenCounter(processor)
    tokens_of = ImageTokens(processor, counter)
    image_sizes: dict[object, tuple[int, int]] = {}
    image_tokens, totals, truncated, image_cut, without_image, row_tokens = [], [], [], [], 0, []
    for start in range(0, len(raw), batch_size):
        batch = raw.select_columns(columns)[start : start + batch_size]
        for offset in range(len(batch["prompt"])):
            row = start + offset
            images = batch[image_column][offset]
            images = images if isinstance(images, list) else [images] if images else []
            sizes = []
            for image in images:
                key = hash(image["bytes"]) if image.get("bytes") else image["path"]
                if key not in image_sizes:  # the pairs of one instruction share its image
                    with PILImage.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as opened:
                        image_sizes[key] = (opened.height, opened.width)
                sizes.append(image_sizes[key])
            n_image = sum(tokens_of(size) for size in sizes)
            without_image += not sizes
            messages = batch["prompt"][offset]
            chosen, rejected = (counter.answer(messages, batch[side][offset], len(sizes)) for side in SIDES)
            prompt = counter.prompt(messages, len(sizes)) - len(sizes) + n_image
            longest = prompt + max(chosen, rejected)
            row_tokens.append((prompt, chosen, rejected))
            image_tokens.append(n_image)
            totals.append(longest)
            if max_length is not None and longest > max_length:
                row_id = batch["id"][offset] if "id" in batch else str(row)
                truncated.append((row, row_id, longest))
                if prompt > max_length:
                    image_cut.append((row, row_id, prompt))
    return AuditReport(
        rows=len(raw),
        image_tokens=_stats(np.array(image_tokens)),
        total_tokens=_stats(np.array(totals)),
        max_length=max_length,
        truncated_rows=truncated,
        image_cut_rows=image_cut,
        rows_without_image=without_image if without_image < len(raw) else 0,
        row_tokens=np.array(row_tokens, dtype=np.int64).reshape(-1, 3),
    )


def check_audit(report: AuditReport, allow_response_truncation: bool = False) -> None:
    """Raise ValueError naming the offending rows and the fix when training would truncate."""
    if report.image_cut_rows:
        rows = ", ".join(f"{row_id} ({tokens} tokens)" for _, row_id, tokens in report.image_cut_rows[:5])
        raise ValueError(
            f"max_length={report.max_length} would cut image tokens in {len(report.image_cut_rows)} rows, e.g. "
            f"{rows}. Raise `max_length` to at least {int(report.total_tokens['max'])} (or set it to null), or lower "
            "the processor's max_pixels so images take fewer tokens."
        )
    if report.truncated_rows and not allow_response_truncation:
        rows = ", ".join(f"{row_id} ({tokens} tokens)" for _, row_id, tokens in report.truncated_rows[:5])
        raise ValueError(
            f"max_length={report.max_length} would truncate the answers of {len(report.truncated_rows)} rows, e.g. "
            f"{rows}. Raise `max_length` to {int(report.total_tokens['max'])}, filter those rows, or pass "
            "`--audit_allow_response_truncation` to accept cut answers."
        )
