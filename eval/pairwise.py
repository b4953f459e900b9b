"""Pairwise statistics shared by the eval win-rate and the Space leaderboard: win rate with ties as half, a
bootstrap 95% CI, and Bradley–Terry strengths on the Elo scale (FastChat's convention, ties as half wins); with
both answers known, the same numbers style-controlled (length and Markdown as extra Bradley–Terry features, as
LMArena's style control does it), because DPO makes answers longer and judges and voters favour longer answers.

Pure numpy; every function takes outcomes as data (no files, no models), so a number on a board or in a report is
recomputable from the votes or judge verdicts that produced it.

    >>> summary = summarize_battles([Battle("silkie", "base", "model_a")] * 20 + [Battle("silkie", "base", "tie")] * 5
    ...                             + [Battle("silkie", "base", "model_b")] * 5, "silkie", "base")
    >>> round(summary.win_rate, 3), round(summary.elo_gap)
    (0.75, 191)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields

import numpy as np

from vlfeedback_kit.stats import bootstrap_ci, bootstrap_indices

WINNERS: tuple[str, ...] = ("model_a", "model_b", "tie", "tie (bothbad)")
"""A battle's outcome (FastChat's names): A better, B better, tie, both bad (a tie for every statistic)."""

ELO_BASE, ELO_SCALE = 1000.0, 400.0
"""Elo scale: a strength ratio of 10 is 400 points; the mean model sits near 1000."""

MIN_BATTLES = 20
"""Below this many battles a board hides its ratings: an unregularised fit on one vote gives ±1800 Elo."""


STYLE_L2 = 1e-6
"""L2 penalty of the style-controlled fit (sklearn's ``C=1e6``, as LMArena's fit): tiny, so the estimates are the
maximum-likelihood ones wherever those exist, yet the fit always converges (one battle, a model that never lost)."""

_FIT_CELLS = 2_000_000
"""Resamples × battles fitted at once: bounds the style-controlled bootstrap's memory (~16 MB per array)."""

_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*+])\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


@dataclass(frozen=True)
class Style:
    """What style control counts in one answer (see :func:`style_of`); the field order is the feature order."""

    tokens: int
    """Words and punctuation marks: each run of letters/digits/underscores is one, each other non-space one."""
    headers: int
    """Markdown ATX headers: lines starting with 1–6 ``#`` and a space."""
    list_items: int
    """Markdown list items: lines starting (after indentation) with ``-``, ``*``, ``+``, ``1.`` or ``1)`` and a
    space."""
    bold: int
    """Bold spans: ``**text**`` or ``__text__`` on one line."""


STYLE_FEATURES: tuple[str, ...] = tuple(f.name for f in fields(Style))


def style_of(answer: str) -> Style:
    """Length and Markdown counts of an answer, the features style control adjusts for. Length is counted on the
    whole answer; headers, list items and bold outside fenced code blocks only (a ``#`` comment in code is no
    header), as LMArena counts them (its length is in tokenizer tokens; here words and punctuation marks, so the
    kit needs no tokenizer — a ratio of lengths barely depends on the tokenizer)."""
    prose = _CODE_BLOCK.sub("", answer)
    return Style(len(_TOKEN.findall(answer)), len(_HEADER.findall(prose)), len(_LIST_ITEM.findall(prose)),
                 len(_BOLD.findall(prose)))  # fmt: skip


@dataclass(frozen=True)
class Battle:
    """One comparison of ``model_a`` with ``model_b`` and its ``winner`` (one of :data:`WINNERS`); ``style_a`` and
    ``style_b`` (:func:`style_of` of each answer) when the answers are known, for the style-controlled fit."""

    model_a: str
    model_b: str
    winner: str
    style_a: Style | None = None
    style_b: Style | None = None

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(f"winner must be one of {', '.join(WINNERS)}, not {self.winner!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different models, got {self.model_a!r} twice")
        if (self.style_a is None) != (self.style_b is None):
            raise ValueError("a battle has the styles of both answers or of neither")


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


def bradley_terry(
    battles: Sequence[Battle], models: Sequence[str] | None = None, iterations: int = 10_000, tolerance: float = 1e-10
) -> dict[str, float]:
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


def style_differences(battles: Sequence[Battle]) -> np.ndarray:
    """Per battle and feature, the normalised difference (a − b) / (a + b) of the two answers' :func:`style_of`
    counts (0 where both are 0): in [−1, 1] whatever the scale, a 600- against a 300-token answer as a 60 against
    a 30. Every battle must carry both styles."""
    if any(b.style_a is None for b in battles):
        raise ValueError("every battle needs style_a and style_b for a style-controlled fit")
    a = np.array([astuple(b.style_a) for b in battles], dtype=float).reshape(len(battles), len(STYLE_FEATURES))
    b = np.array([astuple(b.style_b) for b in battles], dtype=float).reshape(len(battles), len(STYLE_FEATURES))
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)


@dataclass
class StyleFit:
    """A style-controlled Bradley–Terry fit: strengths with the style differences set to zero, per resample."""

    models: list[str]
    strengths: np.ndarray
    """(resamples, models) natural-log strengths; row 0 is the fit on the battles as given."""
    coefficients: np.ndarray
    """(resamples, features) log-odds of A winning per unit of the standardised style difference (NaN for a
    feature left out of the fit)."""
    constant: list[str]
    """Features left out because their difference is 0 in every battle: nothing to control for."""
    confounded: list[str]
    """Features left out because their differences are fixed by which models meet (e.g. only one model ever uses
    bold): their effect cannot be told from a model's strength, so the fit does not control for them."""


def _expit(x: np.ndarray) -> np.ndarray:
    """σ(x) without overflow."""
    return np.exp(-np.logaddexp(0.0, -x))


def _logistic_fit(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    l2: float,
    start: np.ndarray | None = None,
    iterations: int = 100,
    tolerance: float = 1e-9,
) -> np.ndarray:
    """Coefficients (one row per row of ``weights``) of a logistic regression of the soft targets ``y`` on ``x``
    with battle weights and an L2 penalty, by Newton steps (IRLS) halved until the penalised log-loss drops: that
    loss is strictly convex, so the fit converges whatever the data (``start``: the first guess for every row)."""

    def evaluate(theta: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        eta = theta @ x.T
        softplus = np.logaddexp(0.0, eta)  # log(1 + e^η); σ(η) = e^(η − softplus)
        return (w * (softplus - y * eta)).sum(axis=1) + 0.5 * l2 * (theta * theta).sum(axis=1), eta, softplus

    theta = np.zeros((weights.shape[0], x.shape[1])) + (0.0 if start is None else start)
    current, eta, softplus = evaluate(theta, weights)
    active = np.arange(len(theta))  # rows still moving
    for _ in range(iterations):
        w, t = weights[active], theta[active]
        prob = np.exp(eta[active] - softplus[active])
        grad = (w * (prob - y)) @ x + l2 * t
        curvature = w * prob * (1.0 - prob)
        hess = np.stack([(curvature * x[:, i]) @ x for i in range(x.shape[1])], axis=1) + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        size, moved = np.ones(len(t)), t - step
        after, new_eta, new_softplus = evaluate(moved, w)
        for _ in range(30):  # halve the step where the full one overshoots (beyond rounding)
            worse = after > current[active] + 1e-12 * (1.0 + np.abs(current[active]))
            if not worse.any():
                break
            size[worse] /= 2
            moved[worse] = t[worse] - size[worse, None] * step[worse]
            after[worse], new_eta[worse], new_softplus[worse] = evaluate(moved[worse], w[worse])
        keep = after <= current[active]
        rows = active[keep]
        theta[rows], current[rows], eta[rows], softplus[rows] = (
            moved[keep],
            after[keep],
            new_eta[keep],
            new_softplus[keep],
        )
        still = keep & (np.abs(moved - t).max(axis=1) >= tolerance)
        active = active[still]
        if not len(active):
            break
    return theta


def style_controlled_fit(
    battles: Sequence[Battle],
    models: Sequence[str] | None = None,
    rounds: int = 0,
    seed: int = 0,
    l2: float = STYLE_L2,
) -> StyleFit:
    """Bradley–Terry with style control (LMArena's contextual Bradley–Terry): a logistic regression of "A won" (ties
    as half) on model indicators (+1 for A, −1 for B) and the standardised :func:`style_differences`, on the
    battles as given and on ``rounds`` bootstrap resamples of them (the kit's seeded draws, so the raw and the
    style-controlled intervals resample the same battles).

    Each feature's normalised differences are divided by their root mean square, not centred as LMArena centres
    them: centring makes the fit depend on which side each model was shown (a win-rate run always shows the model
    under test as A), and on an arena's random sides the mean is near 0 anyway."""
    models = list(models) if models is not None else sorted({m for b in battles for m in (b.model_a, b.model_b)})
    index = {name: i for i, name in enumerate(models)}
    n = len(battles)
    indicators = np.zeros((n, len(models)))
    for row, battle in enumerate(battles):
        indicators[row, index[battle.model_a]] = 1.0
        indicators[row, index[battle.model_b]] = -1.0
    differences = style_differences(battles)
    scale = np.sqrt(np.mean(differences**2, axis=0)) if n else np.zeros(len(STYLE_FEATURES))
    standardised = np.divide(differences, scale, out=np.zeros_like(differences), where=scale > 1e-12)
    x, used, constant, confounded = indicators, [], [], []
    for k, name in enumerate(STYLE_FEATURES):  # in order, each feature that adds information the fit does not have
        if scale[k] <= 1e-12:
            constant.append(name)
        elif np.linalg.matrix_rank(candidate := np.hstack([x, standardised[:, [k]]])) > np.linalg.matrix_rank(x):
            x, used = candidate, [*used, k]
        else:
            confounded.append(name)
    y = np.array([_points(b, b.model_a) for b in battles])
    draws = bootstrap_indices(n, rounds, seed) if rounds else np.zeros((0, n), dtype=int)
    theta = [_logistic_fit(x, y, np.ones((1, n)), l2)]
    for first in range(0, rounds, chunk := max(1, _FIT_CELLS // max(n, 1))):  # memory: chunk × battles floats
        counts = np.apply_along_axis(np.bincount, 1, draws[first : first + chunk], minlength=n)
        theta.append(_logistic_fit(x, y, counts.astype(float), l2, start=theta[0]))  # resamples start near it
    theta = np.vstack(theta)
    coefficients = np.full((len(theta), len(STYLE_FEATURES)), np.nan)
    coefficients[:, used] = theta[:, len(models) :]
    return StyleFit(models, theta[:, : len(models)], coefficients, constant, confounded)


@dataclass
class LengthControlled:
    """``model``'s win rate against ``other`` had their answers been alike in length and Markdown."""

    win_rate: float
    """σ(strength difference) of the style-controlled fit: the win rate (ties as half) at zero style difference."""
    win_rate_ci: tuple[float, float] | None
    """Bootstrap 95% percentile interval, over the same resampled battles as the raw interval (None without
    bootstrap rounds)."""
    elo_gap: float
    elo_gap_ci: tuple[float, float] | None
    style_coefficients: dict[str, float | None]
    """Log-odds of A winning per root mean square of each feature's normalised difference (positive: the judge
    or voters favour more of it); None for a feature the fit left out (see ``note``)."""
    note: str = ""
    """Which features were left out of the fit and why (no differences; confounded with the models)."""


def length_controlled(
    battles: Sequence[Battle], model: str, other: str, rounds: int = 1000, seed: int = 0
) -> LengthControlled:
    """The style-controlled win rate of ``model`` against ``other``, its bootstrap 95% CI and Elo gap, and the
    style coefficients, with a note naming the features the data could not control for."""
    fit = style_controlled_fit(battles, [model, other], rounds, seed)
    coefficients = {name: None if math.isnan(c) else float(c) for name, c in zip(STYLE_FEATURES, fit.coefficients[0])}
    notes = []
    if fit.constant:
        notes.append(f"not controlled for {', '.join(fit.constant)}: no battle's answers differ in it")
    if fit.confounded:
        notes.append(f"not controlled for {', '.join(fit.confounded)}: its difference is fixed by which model is "
                     "which (too few or too alike battles), so its effect cannot be told from the models' "
                     "strengths")  # fmt: skip
    rates = _expit(fit.strengths[:, 0] - fit.strengths[:, 1])
    ci = None
    if rounds:
        low, high = (float(q) for q in np.percentile(rates[1:], [2.5, 97.5]))
        ci = (low, high)
    return LengthControlled(
        win_rate=float(rates[0]), win_rate_ci=ci, elo_gap=elo_gap(float(rates[0])),
        elo_gap_ci=(elo_gap(ci[0]), elo_gap(ci[1])) if ci else None, style_coefficients=coefficients,
        note="; ".join(notes),
    )  # fmt: skip


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
    length_controlled: LengthControlled | None = None
    """The same comparison style-controlled (:func:`length_controlled`); None unless every battle has styles."""

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


def summarize_battles(
    battles: Sequence[Battle],
    model: str,
    other: str,
    rounds: int = 1000,
    seed: int = 0,
    min_battles: int = MIN_BATTLES,
) -> PairwiseSummary:
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
    styled = n and all(b.style_a is not None for b in battles)
    return PairwiseSummary(
        model=model, other=other, n=n, **counts, win_rate=p, win_rate_ci=rate_ci, elo_gap=gap, elo_gap_ci=gap_ci,
        tie_rate=counts["ties"] / n if n else float("nan"),
        both_bad_rate=counts["both_bad"] / n if n else float("nan"),
        bootstrap_rounds=rounds, seed=seed, hidden=hidden, ratings=ratings,
        length_controlled=length_controlled(battles, model, other, rounds, seed) if styled else None,
    )  # fmt: skip


def _points(battle: Battle, model: str) -> float:
    if battle.winner in ("tie", "tie (bothbad)"):
        return 0.5
    return 1.0 if (battle.winner == "model_a") == (battle.model_a == model) else 0.0
