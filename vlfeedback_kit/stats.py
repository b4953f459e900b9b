"""The kit's one bootstrap: a seeded percentile interval of a mean (judge-vs-human agreement, win rates)."""

from __future__ import annotations

import numpy as np


def bootstrap_indices(n: int, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n) indices of ``rounds`` resamples of ``n`` items with replacement, from a seeded generator (same
    size and seed, same draws, whoever asks: a statistic refitted per resample shares its resamples with the
    means')."""
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def bootstrap_means(values: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """The means of ``rounds`` resamples of ``values`` with replacement, from a seeded generator (same data, same
    draws, whoever asks)."""
    values = np.asarray(values, dtype=float)
    return values[bootstrap_indices(len(values), rounds, seed)].mean(axis=1)


def bootstrap_ci(values: np.ndarray, rounds: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` at ``level``."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(bootstrap_means(values, rounds, seed), [tail, 100 - tail])
    return float(low), float(high)
