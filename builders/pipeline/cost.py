"""Money, as pure functions: the price table, the cost of a call from its usage, and a run's estimate before spending.

The cost of a call is computed from the token usage the API returned, never from estimates; the estimate (for
``--dry-run`` and for reserving budget under ``--max-cost``) counts ~4 characters per text token, the provider's
tile rule for the image, and ``OUTPUT_TOKENS_PER_RATING`` per text × aspect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.errors import UserError

PRICES_FILE = Path(__file__).with_name("prices.yaml")
CHARS_PER_TOKEN = 4
OUTPUT_TOKENS_PER_RATING = 60
"""Estimated completion tokens per text × aspect: a one- or two-sentence rationale, the rating, the JSON around."""
MESSAGE_OVERHEAD_TOKENS = 10


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, the Batch API's share of the price, and how images are counted."""

    input: float
    output: float
    batch_discount: float = 0.5
    image_base_tokens: int = 85
    image_tile_tokens: int = 170


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


def estimate_tokens(prompt_chars: int, image_size: tuple[int, int], n_texts: int, detail: str, price: Price):
    """(prompt, completion) tokens one judge call is expected to use."""
    prompt = (
        math.ceil(prompt_chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS + image_tokens(*image_size, detail, price)
    )
    return prompt, n_texts * len(ASPECTS) * OUTPUT_TOKENS_PER_RATING


def require_price(model: str, prices: dict[str, Price], flag: str) -> Price:
    """The model's price, or a UserError naming ``flag`` (an estimate or a budget needs a price)."""
    price = price_for(model, prices)
    if price is None:
        raise UserError(f"{flag} needs a price for {model!r}, which the price table lacks; pass --prices FILE")
    return price
