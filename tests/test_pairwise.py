"""Pairwise statistics shared by eval's win-rate and the Space's leaderboard (hand-checkable cases)."""

import math

import pytest

from vlfeedback_kit.eval.pairwise import (
    Battle,
    bradley_terry,
    elo_gap,
    outcome_counts,
    summarize_battles,
    swap_consistent,
)


def battles(wins: int, ties: int, losses: int, both_bad: int = 0) -> list[Battle]:
    """Silkie's outcomes against base, with Silkie shown on alternating sides as a blind arena does."""
    out = []
    for i, winner in enumerate(["w"] * wins + ["t"] * ties + ["l"] * losses + ["bb"] * both_bad):
        silkie_is_a = i % 2 == 0
        a, b = ("silkie", "base") if silkie_is_a else ("base", "silkie")
        code = {"w": "model_a" if silkie_is_a else "model_b", "l": "model_b" if silkie_is_a else "model_a",
                "t": "tie", "bb": "tie (bothbad)"}[winner]
        out.append(Battle(a, b, code))
    return out


def test_twenty_five_five_gives_the_closed_form_gap():
    summary = summarize_battles(battles(20, 5, 5), "silkie", "base", rounds=2000, seed=1)
    assert (summary.n, summary.wins, summary.ties, summary.losses) == (30, 20, 5, 5)
    assert summary.win_rate == 0.75
    assert summary.elo_gap == pytest.approx(400 * math.log10(3))  # 190.8
    ratings = summary.ratings
    assert ratings["silkie"] - ratings["base"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    low, high = summary.win_rate_ci
    assert 0.55 < low < 0.75 < high < 0.92  # Wilson on the same counts: [0.573, 0.870]
    assert summary.elo_gap_ci[0] < summary.elo_gap < summary.elo_gap_ci[1]
    assert summary.hidden is None and summary.tie_rate == pytest.approx(5 / 30)


def test_the_bootstrap_is_seeded_and_both_bad_counts_as_a_tie():
    one = summarize_battles(battles(12, 4, 6, both_bad=3), "silkie", "base", seed=7)
    two = summarize_battles(battles(12, 4, 6, both_bad=3), "silkie", "base", seed=7)
    assert one.win_rate_ci == two.win_rate_ci
    assert (one.ties, one.both_bad) == (7, 3) and one.win_rate == pytest.approx((12 + 3.5) / 25)
    assert one.both_bad_rate == pytest.approx(3 / 25)


def test_too_few_battles_hide_the_ratings_with_the_reason():
    summary = summarize_battles(battles(1, 0, 0), "silkie", "base")
    assert summary.hidden == "1 battle so far; ratings are shown from 20 on" and summary.ratings == {}
    assert math.isinf(summary.elo_gap)  # why a board must not show it


def test_sides_are_counted_from_the_named_model():
    assert outcome_counts(battles(3, 1, 2), "base", "silkie") == {"wins": 2, "ties": 1, "losses": 3, "both_bad": 0}
    with pytest.raises(ValueError, match="not 'silkie' vs 'other'"):
        outcome_counts(battles(1, 0, 0), "silkie", "other")
    with pytest.raises(ValueError, match="winner must be one of"):
        Battle("a", "b", "A")


def test_a_verdict_that_flips_with_the_order_is_a_tie():
    assert swap_consistent("model_a", "model_b") == "model_a"  # X won as A and as B
    assert swap_consistent("model_b", "model_a") == "model_b"
    assert swap_consistent("model_a", "model_a") == "tie"  # position bias: A wins whoever A is
    assert swap_consistent("tie", "model_b") == "tie"


def test_bradley_terry_with_three_models_orders_them():
    games = battles(8, 0, 2) + [Battle("base", "other", "model_a")] * 7 + [Battle("base", "other", "model_b")] * 3
    ratings = bradley_terry(games)
    assert ratings["silkie"] > ratings["base"] > ratings["other"]
    assert sum(ratings.values()) / 3 == pytest.approx(1000)


def test_elo_gap_reference_values():
    assert elo_gap(0.5) == 0 and elo_gap(1.0) == math.inf
