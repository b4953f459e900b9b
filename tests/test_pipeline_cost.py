"""Money and retries as pure functions: the price table, call cost, image tokens, Retry-After and backoff.

Run: pytest tests/test_pipeline_cost.py
"""

from __future__ import annotations

import email.utils

import pytest

from vlfeedback_kit.builders.pipeline.cost import (
    Budget,
    Price,
    call_cost,
    estimate_tokens,
    image_tokens,
    load_prices,
    price_for,
    request_tokens,
    require_price,
)
from vlfeedback_kit.builders.pipeline.endpoint import (
    RetryPolicy,
    backoff_delay,
    completion_of,
    is_transient,
    retry_after_seconds,
)
from vlfeedback_kit.errors import UserError


def test_prices_match_exactly_or_by_longest_prefix() -> None:
    prices = load_prices()
    assert price_for("gpt-4o", prices) == Price(2.50, 10.00)
    assert price_for("gpt-4o-2024-08-06", prices) == prices["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18", prices) == prices["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-05-13", prices).input == 5.00
    assert price_for("llava-hf/llava-1.5-7b-hf", prices) is None
    with pytest.raises(UserError, match="--dry-run needs a price for 'local-model'.*--prices"):
        require_price("local-model", prices, "--dry-run")


def test_a_price_table_of_the_wrong_shape_is_refused(tmp_path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input: 1, output: 2, surprise: 3}\n")
    with pytest.raises(UserError, match="--prices"):
        load_prices(path)
    path.write_text("models:\n  m: {input: 1, output: 2}\n")
    assert load_prices(path) == {"m": Price(1, 2)}


def test_call_cost_is_usage_times_price_with_the_batch_discount() -> None:
    price = Price(input=2.5, output=10.0, batch_discount=0.5)
    assert call_cost(1_000_000, 100_000, price) == pytest.approx(3.5)
    assert call_cost(1_000_000, 100_000, price, batch=True) == pytest.approx(1.75)
    assert call_cost(10, 10, None) is None


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((448, 448), "high", 85 + 170),  # one tile
        ((1024, 1024), "high", 85 + 170 * 4),  # 768 × 768: 2 × 2 tiles
        ((2048, 4096), "high", 85 + 170 * 6),  # 1024 × 2048 → 768 × 1536: 2 × 3 tiles
        ((4096, 4096), "low", 85),
    ],
)
def test_image_tokens_follow_the_tile_rule(size: tuple[int, int], detail: str, tokens: int) -> None:
    assert image_tokens(*size, detail, Price(1, 1)) == tokens


def test_the_estimate_counts_text_image_and_ratings() -> None:
    prompt, completion = estimate_tokens(4000, (448, 448), 4, "high", Price(1, 1))
    assert prompt == 1000 + 10 + 255
    assert completion == 4 * 3 * 60


def test_retry_after_headers_in_milliseconds_seconds_and_dates() -> None:
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    now = 1_800_000_000.0
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_backoff_honours_retry_after_and_grows_with_jitter_otherwise() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    assert backoff_delay(0, 3.0, policy, 0.0) == 3.0
    assert 3.0 <= backoff_delay(5, 3.0, policy, 0.999) <= 3.6
    assert [backoff_delay(k, None, policy, 0.999) for k in range(5)] == pytest.approx([1, 2, 4, 8, 8], rel=1e-3)
    assert [backoff_delay(k, None, policy, 0.0) for k in range(5)] == [0.5, 1, 2, 4, 4]



@pytest.mark.parametrize(
    ("status", "transient"),
    [(408, True), (409, True), (429, True), (500, True), (503, True), (400, False), (404, False), (422, False)],
)
def test_one_rule_says_which_http_errors_are_asked_again(status: int, transient: bool) -> None:
    """The calls' retries and the Batch API's rounds classify a failed request alike."""
    assert is_transient(status) is transient



def test_a_completion_keeps_the_model_that_answered() -> None:
    """What eval records as the resolved judge comes with the completion (no second client wrapper to see it)."""
    body = {"model": "gpt-4o-2024-08-06", "choices": [{"message": {"content": "Rating: 4"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3}}  # fmt: skip
    completion = completion_of(body)
    assert (completion.model, completion.prompt_tokens, completion.completion_tokens) == ("gpt-4o-2024-08-06", 12, 3)
    assert completion.reply.content == "Rating: 4" and completion_of({**body, "model": None}).model is None


def test_the_budget_reserves_for_calls_in_flight() -> None:
    budget = Budget(limit=10.0, spent=1.0, estimate=lambda item: 1.0, key=lambda item: item)
    admitted = [item for item in range(16) if budget.admit(item)]  # 16 asked at once, none settled yet
    assert admitted == list(range(9))  # 1 spent + 9 reserved: a 10th would pass the cap
    budget.settle(0, 0.5)  # calls that cost less than their estimates free the difference
    budget.settle(1, 0.5)
    assert budget.admit(16) and not budget.admit(17)
    budget.settle(2, None)  # a failed call frees its reservation
    assert budget.admit(18) and not budget.admit(19)
    assert budget.spent + sum(budget.reserved.values()) <= 10.0
    unlimited = Budget(limit=None, spent=0.0, estimate=lambda item: 1e9, key=lambda item: item)
    assert all(unlimited.admit(item) for item in range(100))


def test_a_request_is_estimated_from_its_text_images_and_max_tokens() -> None:
    request = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 3}
    assert request_tokens(request, [], Price(1, 1)) == (100 + 10, 3)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}
    assert request_tokens(parts, [(448, 448)], Price(1, 1)) == (10 + 10 + 255, 300)  # no max_tokens: 300
