"""Pairwise statistics shared by eval's win-rate and the Space's leaderboard (hand-checkable cases)."""

import math

import numpy as np
import pytest
from support.length_bias import length_biased

from vlfeedback_kit.eval.pairwise import (
    STYLE_FEATURES,
    Battle,
    Style,
    bradley_terry,
    elo_gap,
    length_controlled,
    outcome_counts,
    style_controlled_fit,
    style_of,
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


def test_style_of_counts_length_headers_list_items_and_bold_outside_code():
    answer = (
        "# Title\n## Part\nSome **bold** and __also bold__ text, done.\n"
        "- one\n  * two\n+ three\n1. four\n2) five\n#not a header\n-not an item\n"
        "```python\n# a comment, not a header\n- not an item **nor bold**\n```\n"
    )
    style = style_of(answer)
    assert (style.headers, style.list_items, style.bold) == (2, 5, 2)
    assert style_of("Hello, world!").tokens == 4  # Hello , world !
    assert style_of("") == Style(0, 0, 0, 0)
    assert STYLE_FEATURES == ("tokens", "headers", "list_items", "bold")


def styled_battles(n: int, length_effect: float, strength: float, seed: int = 0) -> list[Battle]:
    """:func:`length_biased` outcomes with Silkie always A, as a win-rate run shows it."""
    winner = {"win": "model_a", "tie": "tie", "loss": "model_b"}
    return [Battle("silkie", "base", winner[outcome], Style(a, 0, 0, 0), Style(b, 0, 0, 0))
            for a, b, outcome in length_biased(n, length_effect, strength, seed)]  # fmt: skip


def test_a_judge_that_prefers_longer_answers_wins_raw_but_not_length_controlled():
    summary = summarize_battles(styled_battles(400, length_effect=4.0, strength=0.0), "silkie", "base", seed=3)
    lc = summary.length_controlled
    assert summary.win_rate_ci[0] > 0.6  # raw: "silkie is better"
    assert lc.win_rate_ci[0] < 0.5 < lc.win_rate_ci[1] and abs(lc.win_rate - 0.5) < 0.06
    assert lc.win_rate_ci[1] < summary.win_rate_ci[0]
    assert lc.style_coefficients["tokens"] > 0.5 and lc.elo_gap_ci[0] < 0 < lc.elo_gap_ci[1]
    assert lc.note == "not controlled for headers, list_items, bold: no battle's answers differ in it"
    assert lc.style_coefficients["bold"] is None


def test_without_a_style_effect_length_controlled_agrees_with_raw():
    summary = summarize_battles(styled_battles(400, length_effect=0.0, strength=0.8), "silkie", "base", seed=3)
    lc = summary.length_controlled
    assert summary.win_rate > 0.6 and abs(lc.win_rate - summary.win_rate) < 0.05
    assert lc.win_rate_ci[0] < summary.win_rate < lc.win_rate_ci[1]
    assert abs(lc.style_coefficients["tokens"]) < 0.3


def test_length_control_is_seeded_and_does_not_depend_on_the_side_each_model_was_shown():
    games = styled_battles(200, length_effect=3.0, strength=0.3)
    one = summarize_battles(games, "silkie", "base", seed=5).length_controlled
    assert one == summarize_battles(games, "silkie", "base", seed=5).length_controlled
    assert one.win_rate_ci != summarize_battles(games, "silkie", "base", seed=6).length_controlled.win_rate_ci
    flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    swapped = [Battle(g.model_b, g.model_a, flip[g.winner], g.style_b, g.style_a) if i % 2 else g
               for i, g in enumerate(games)]  # fmt: skip
    other = summarize_battles(swapped, "silkie", "base", seed=5).length_controlled
    assert other.win_rate == pytest.approx(one.win_rate, abs=1e-6)
    assert other.style_coefficients["tokens"] == pytest.approx(one.style_coefficients["tokens"], abs=1e-5)


def test_degenerate_styles_give_a_defined_result_or_the_reason():
    same = [Battle(g.model_a, g.model_b, g.winner, Style(50, 1, 0, 0), Style(50, 1, 0, 0))
            for g in battles(20, 5, 5)]  # fmt: skip
    summary = summarize_battles(same, "silkie", "base")
    lc = summary.length_controlled
    assert lc.win_rate == pytest.approx(summary.win_rate, abs=1e-4)  # nothing to control: the plain fit
    assert "not controlled for tokens, headers, list_items, bold" in lc.note
    assert all(c is None for c in lc.style_coefficients.values())
    one = summarize_battles([Battle("silkie", "base", "model_a", Style(90, 0, 0, 0), Style(30, 0, 0, 0))],
                            "silkie", "base")  # fmt: skip
    controlled = one.length_controlled
    assert one.hidden and controlled.win_rate > 0.99 and math.isfinite(controlled.elo_gap)  # the tiny L2 bounds it
    assert "not controlled for tokens: its difference is fixed by which model is which" in controlled.note
    bold = [Battle(g.model_a, g.model_b, g.winner, g.style_a, Style(g.style_b.tokens, 0, 0, 1))
            for g in styled_battles(100, length_effect=3.0, strength=0.0)]  # fmt: skip
    only_base_bolds = summarize_battles(bold, "silkie", "base", rounds=100).length_controlled
    assert "not controlled for bold: its difference is fixed" in only_base_bolds.note
    assert only_base_bolds.style_coefficients["tokens"] > 0.5 and only_base_bolds.style_coefficients["bold"] is None
    assert length_controlled(bold, "silkie", "base", rounds=0).win_rate_ci is None  # no resamples, no interval
    assert summarize_battles(battles(20, 5, 5), "silkie", "base").length_controlled is None  # no styles, no LC
    mixed = [*same[:-1], battles(1, 0, 0)[0]]
    assert summarize_battles(mixed, "silkie", "base").length_controlled is None
    with pytest.raises(ValueError, match="styles of both answers or of neither"):
        Battle("a", "b", "tie", Style(1, 0, 0, 0))


def test_style_controlled_fit_orders_three_models_once_length_is_accounted_for():
    rng = np.random.default_rng(1)
    true = {"long": 0.0, "mid": 0.5, "short": 1.0}  # "short" is best, "long" only writes more
    length = {"long": 300, "mid": 150, "short": 60}
    games = []
    for _ in range(900):
        a, b = rng.choice(list(true), size=2, replace=False)
        la, lb = int(rng.normal(length[a], 20)), int(rng.normal(length[b], 20))
        p = 1.0 / (1.0 + math.exp(-(true[a] - true[b] + 3.0 * (la - lb) / (la + lb))))
        winner = "model_a" if rng.random() < p else "model_b"
        games.append(Battle(a, b, winner, Style(la, 0, 0, 0), Style(lb, 0, 0, 0)))
    raw = bradley_terry(games)
    assert raw["long"] > raw["short"]
    fit = style_controlled_fit(games)
    strength = dict(zip(fit.models, fit.strengths[0], strict=True))
    assert strength["short"] > strength["mid"] > strength["long"]
    assert fit.coefficients.shape == (1, 4) and fit.confounded == []
