"""Pairwise statistics shared by the eval win-rate and the Space leaderboard: win rate with ties as half, a
bootstrap 95% CI, and Bradley–Terry strengths on the Elo scale (FastChat's convention, ties as half wins).

Pure numpy; every function takes outcomes as data (no files, no models), so a number on a board or in a report is
recomputable from the votes or judge verdicts that produced it.

    >>> summary = summarize_battles([Battle("silkie", "base", "model_a")] * 20 + [Battle("silkie", "base", "tie")] * 5
    ...                             + [Battle("silkie", "base", "model_b")] * 5, "silkie", "base")
    >>> round(summary.win_rate, 3), round(summary.elo_gap)
    (0.75, 191)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from vlfeedback_kit.stats import bootstrap_ci

WINNERS: tuple[str, ...] = ("model_a", "model_b", "tie", "tie (bothbad)")
"""A battle's outcome (FastChat's names): A better, B better, tie, both bad (a tie for every statistic)."""

ELO_BASE, ELO_SCALE = 1000.0, 400.0
"""Elo scale: a strength ratio of 10 is 400 points; the mean model sits near 1000."""

MIN_BATTLES = 20
"""Below this many battles a board hides its ratings: an unregularised fit on one vote gives ±1800 Elo."""


@dataclass(frozen=True)
class Battle:
    """One comparison of ``model_a`` with ``model_b`` and its ``winner`` (one of :data:`WINNERS`)."""

    model_a: str
    model_b: str
    winner: str

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(f"winner must be one of {', '.join(WINNERS)}, not {self.winner!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different models, got {self.model_a!r} twice")


def swap_consistent(first: str, second: str) -> str:
    """Combine a judge's verdicts on one item asked in both orders into one outcome for the first order's A.

    ``first`` is the verdict with (X, Y) shown as (A, B), ``second`` with (Y, X) shown as (A, B). X wins only if it
    wins in both orders; a verdict that flips with the order (position bias) or a tie in either order is a tie."""
    for verdict in (first, second):
        if verdict not in ("model_a", "model_b", "tie"):
            raise ValueError(f"a verdict must be model_a, model_b or tie, not {verdict!r}")
    if first == "model_a" and second == "model_b":
        return "model_a"
    if first == "model_b" and second == "model_a":
        return "model_b"
    return "tie"


def elo_gap(p: float) -> float:
    """Elo difference that makes a win probability of ``p`` (ties as half): 400·log10(p / (1 − p))."""
    if not 0.0 < p < 1.0:
        return math.copysign(math.inf, p - 0.5) if p != 0.5 else 0.0
    return ELO_SCALE * math.log10(p / (1.0 - p))


def bradley_terry(battles: Sequence[Battle], models: Sequence[str] | None = None, iterations: int = 10_000,
                  tolerance: float = 1e-10) -> dict[str, float]:
    """Bradley–Terry strengths on the Elo scale by minorization–maximization (Hunter 2004), ties as half a win
    each way. Models that never won (or never lost) have no finite maximum-likelihood strength: the fit then
    stops at ``iterations`` with a very large gap, which is why boards hide ratings below :data:`MIN_BATTLES`."""
    models = list(models) if models is not None else sorted({m for b in battles for m in (b.model_a, b.model_b)})
    index = {name: i for i, name in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    for battle in battles:
        a, b = index[battle.model_a], index[battle.model_b]
        if battle.winner == "model_a":
            wins[a, b] += 1.0
        elif battle.winner == "model_b":
            wins[b, a] += 1.0
        else:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    strength = np.ones(len(models))
    for _ in range(iterations):
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = np.where(denominator > 0, total_wins / np.where(denominator > 0, denominator, 1.0), strength)
        updated = np.clip(updated, 1e-12, None)
        updated /= np.exp(np.mean(np.log(updated)))  # fix the scale: geometric mean 1 → mean Elo 1000
        if np.max(np.abs(updated - strength)) < tolerance:
            strength = updated
            break
        strength = updated
    return {name: ELO_BASE + ELO_SCALE * math.log10(strength[i]) for name, i in index.items()}


@dataclass
class PairwiseSummary:
    """What a report or a leaderboard shows for ``model`` against ``other`` (outcomes from ``model``'s side)."""

    model: str
    other: str
    n: int
    wins: int
    ties: int
    losses: int
    both_bad: int
    win_rate: float
    """(wins + ties / 2) / n, both-bad votes counted as ties."""
    win_rate_ci: tuple[float, float]
    """Bootstrap 95% percentile interval of the win rate over resampled battles."""
    elo_gap: float
    """Bradley–Terry strength of ``model`` minus that of ``other``, in Elo points."""
    elo_gap_ci: tuple[float, float]
    tie_rate: float
    both_bad_rate: float
    bootstrap_rounds: int
    seed: int
    hidden: str | None = None
    """Why ratings are withheld (too few battles), or None."""
    ratings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def outcome_counts(battles: Iterable[Battle], model: str, other: str) -> dict[str, int]:
    """Wins, ties (both-bad included), losses and both-bad votes of ``model`` against ``other``."""
    counts = {"wins": 0, "ties": 0, "losses": 0, "both_bad": 0}
    for battle in battles:
        if {battle.model_a, battle.model_b} != {model, other}:
            raise ValueError(f"battle between {battle.model_a!r} and {battle.model_b!r} is not {model!r} vs {other!r}")
        if battle.winner in ("tie", "tie (bothbad)"):
            counts["ties"] += 1
            counts["both_bad"] += battle.winner == "tie (bothbad)"
        elif (battle.winner == "model_a") == (battle.model_a == model):
            counts["wins"] += 1
        else:
            counts["losses"] += 1
    return counts


def summarize_battles(battles: Sequence[Battle], model: str, other: str, rounds: int = 1000, seed: int = 0,
                      min_battles: int = MIN_BATTLES) -> PairwiseSummary:
    """Win rate, Bradley–Terry gap and their bootstrap 95% CIs of ``model`` against ``other``.

    With two models the Bradley–Terry gap is 400·log10(p / (1 − p)) with p the win rate (ties as half); the fit is
    kept general so a board with more models uses the same code. The bootstrap resamples whole battles with a
    seeded generator, so the same votes always give the same interval."""
    counts = outcome_counts(battles, model, other)
    n = len(battles)
    score = counts["wins"] + 0.5 * counts["ties"]
    p = score / n if n else float("nan")
    gap = elo_gap(p) if n else float("nan")
    rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    gap_ci: tuple[float, float] = (float("nan"), float("nan"))
    if n:
        rate_ci = bootstrap_ci(np.array([_points(b, model) for b in battles]), rounds, seed)
        gap_ci = (elo_gap(rate_ci[0]), elo_gap(rate_ci[1]))
    hidden = None
    if n < min_battles:
        hidden = f"{n} battle{'s' if n != 1 else ''} so far; ratings are shown from {min_battles} on"
    ratings = bradley_terry(battles, [model, other]) if n and hidden is None else {}
    return PairwiseSummary(
        model=model, other=other, n=n, **counts, win_rate=p, win_rate_ci=rate_ci, elo_gap=gap, elo_gap_ci=gap_ci,
        tie_rate=counts["ties"] / n if n else float("nan"),
        both_bad_rate=counts["both_bad"] / n if n else float("nan"),
        bootstrap_rounds=rounds, seed=seed, hidden=hidden, ratings=ratings,
    )  # fmt: skip


def _points(battle: Battle, model: str) -> float:
    if battle.winner in ("tie", "tie (bothbad)"):
        return 0.5
    return 1.0 if (battle.winner == "model_a") == (battle.model_a == model) else 0.0
