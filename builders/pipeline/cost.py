"""Money: the price table, the cost of a call from its usage, a run's estimate before spending, and the
``--max-cost`` budget every judge loop (``annotate``'s, ``eval``'s) admits its calls through.

The cost of a call is computed from the token usage the API returned, never from estimates; the estimate (for
``--dry-run`` and for reserving budget under ``--max-cost``) counts ~4 characters per text token, the provider's
tile rule for each image, and, for the completion, ``OUTPUT_TOKENS_PER_RATING`` per text × aspect (``annotate``)
or the request's ``max_tokens`` (``eval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import yaml

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.errors import UserError

PRICES_FILE = Path(__file__).with_name("prices.yaml")
CHARS_PER_TOKEN = 4
OUTPUT_TOKENS_PER_RATING = 60
"""Estimated completion tokens per text × aspect: a one- or two-sentence rationale, the rating, the JSON around."""
MESSAGE_OVERHEAD_TOKENS = 10
DEFAULT_COMPLETION_TOKENS = 300
"""Completion tokens reserved for a request without ``max_tokens`` (an MMHal-Bench rating with its reasons)."""
LARGEST_IMAGE = (2048, 768)
"""An image whose size cannot be read is counted as the most tiles the tile rule allows (4 × 2)."""


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, the Batch API's share of the price, and how images are counted."""

    input: float
    output: float
    batch_discount: float = 0.5
    image_base_tokens: int = 85
    image_tile_tokens: int = 170


DEFAULT_TILES = Price(input=0.0, output=0.0)
"""What an estimate counts images by when the table has no price for the model: the default tile rule (tokens, no
dollars)."""


def unpriced_note(model: str) -> str:
    """Why a run's cost is null: the price table lacks the model (``annotate --dry-run`` and eval say it alike)."""
    return f"no price for {model!r} in the price table; pass --prices FILE"


def load_prices(path: Path | None = None) -> dict[str, Price]:
    """The price table: the kit's ``prices.yaml`` or a user's file of the same layout."""
    table_path = path or PRICES_FILE
    try:
        data = yaml.safe_load(table_path.read_text(encoding="utf-8")) or {}
        return {str(name): Price(**entry) for name, entry in (data.get("models") or {}).items()}
    except (OSError, yaml.YAMLError, TypeError, AttributeError) as err:
        raise UserError(f"--prices {table_path}: not a price table like {PRICES_FILE.name} ({err})") from err


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of a model: its exact entry, else the longest entry its name starts with."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def call_cost(prompt_tokens: int, completion_tokens: int, price: Price | None, batch: bool = False) -> float | None:
    """USD of one call from the usage the API reported (None when the model has no price)."""
    if price is None:
        return None
    dollars = (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
    return dollars * (price.batch_discount if batch else 1.0)


def image_tokens(width: int, height: int, detail: str, price: Price) -> int:
    """Tokens an image costs: the base at ``low``; else fit in 2048², shortest side to 768, then 512-px tiles."""
    if detail == "low":
        return price.image_base_tokens
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return price.image_base_tokens + price.image_tile_tokens * tiles


def estimate_prompt_tokens(
    prompt_chars: int, image_sizes: Sequence[tuple[int, int]], detail: str, price: Price
) -> int:
    """Prompt tokens a request is expected to use: its text at ~4 characters a token, the message overhead, and
    each image by the tile rule."""
    images = sum(image_tokens(*size, detail, price) for size in image_sizes)
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS + images


def estimate_tokens(prompt_chars: int, image_size: tuple[int, int], n_texts: int, detail: str, price: Price):
    """(prompt, completion) tokens one ``annotate`` judge call is expected to use."""
    completion = n_texts * len(ASPECTS) * OUTPUT_TOKENS_PER_RATING
    return estimate_prompt_tokens(prompt_chars, [image_size], detail, price), completion


def request_tokens(request: Mapping, image_sizes: Sequence[tuple[int, int]], price: Price) -> tuple[int, int]:
    """(prompt, completion) tokens a chat request is expected to use: the text of its messages and its images
    (at ``high`` detail, the dearest), and its ``max_tokens`` (else ``DEFAULT_COMPLETION_TOKENS``)."""
    chars = 0
    for message in request.get("messages") or []:
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text") or "" for p in content or ()]
        chars += sum(len(part) for part in parts)
    completion = int(request.get("max_tokens") or DEFAULT_COMPLETION_TOKENS)
    return estimate_prompt_tokens(chars, image_sizes, "high", price), completion


def require_price(model: str, prices: dict[str, Price], flag: str) -> Price:
    """The model's price, or a UserError naming ``flag`` (an estimate or a budget needs a price)."""
    price = price_for(model, prices)
    if price is None:
        raise UserError(f"{flag} needs a price for {model!r}, which the price table lacks; pass --prices FILE")
    return price


class Budget:
    """``--max-cost`` of a judge loop: a call is admitted only if the spend so far (the ledger's and this run's),
    the estimates reserved for the calls in flight and its own estimate fit the limit — so N calls in flight
    cannot pass it by N calls. A settled call's reservation is replaced by what it cost. The only overshoot left
    is a call costing more than its estimate.

    ``estimate`` prices an item's next call (USD); ``key`` names its reservation (one per item at a time)."""

    def __init__(
        self,
        limit: float | None,
        spent: float,
        estimate: Callable[[Any], float],
        key: Callable[[Any], Hashable] = attrgetter("key"),
    ) -> None:
        self.limit, self.spent, self.estimate, self.key = limit, spent, estimate, key
        self.reserved: dict[Hashable, float] = {}

    def admit(self, item: Any) -> bool:
        """Reserve the estimate of the item's next call, or refuse it when the limit would be passed."""
        if self.limit is None:
            return True
        estimate = self.estimate(item)
        if self.spent + sum(self.reserved.values()) + estimate > self.limit:
            return False
        self.reserved[self.key(item)] = estimate
        return True

    def settle(self, item: Any, cost: float | None, again: bool = False) -> None:
        """Replace an item's reservation by what its call cost; ``again`` reserves its next call (a re-ask) as
        already admitted."""
        self.spent += cost or 0.0
        self.reserved.pop(self.key(item), None)
        if again and self.limit is not None:
            self.reserved[self.key(item)] = self.estimate(item)
