"""Synthetic comparisons where the judge (or voter) favours the longer answer: the case style control is for.

    for silkie_tokens, base_tokens, outcome in length_biased(200, length_effect=4.0, strength=0.0):
        ...

Silkie writes longer answers than its base (token counts drawn in [80, 400) and [40, 250)); Silkie wins with
probability σ(strength + length_effect · (s − b) / (s + b)), the normalised length difference style control fits,
and a quarter of the close calls (within 0.1 of that probability) are ties. Seeded: same arguments, same outcomes.
"""

from __future__ import annotations

import math

import numpy as np


def length_biased(n: int, length_effect: float, strength: float, seed: int = 0) -> list[tuple[int, int, str]]:
    """``n`` (Silkie's tokens, base's tokens, outcome) with outcome ``win``, ``tie`` or ``loss`` for Silkie."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        silkie, base = int(rng.integers(80, 400)), int(rng.integers(40, 250))
        p = 1.0 / (1.0 + math.exp(-(strength + length_effect * (silkie - base) / (silkie + base))))
        u = rng.random()
        out.append((silkie, base, "tie" if abs(u - p) < 0.1 else ("win" if u < p else "loss")))
    return out
