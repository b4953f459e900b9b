"""PNG figures shown in the dataset card, drawn with matplotlib's Agg renderer from counts the card already holds.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so rendering a card never switches the backend of
a caller's session (a notebook, a Space).

Files are byte-stable for the same counts and matplotlib version (no timestamp or software metadata), so
re-rendering an unchanged folder uploads nothing new.
"""

from __future__ import annotations

from pathlib import Path

RATING_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5", "null")


def slug(name: str) -> str:
    """A file-name-safe lower-case form of an aspect name (``Visual Faithfulness`` → ``visual-faithfulness``)."""
    return "-".join(name.lower().split())


def distribution_title(aspect: str, counts: dict[str, int]) -> str:
    """A plot's title: how many responses the judge rated (unparsed ratings are not rated) out of all."""
    total = sum(counts.values())
    return f"{aspect}: {total - counts.get('null', 0):,} rated of {total:,} responses"


def rating_distribution_plot(aspect: str, counts: dict[str, int], path: Path) -> Path:
    """Bar chart of one aspect's ratings (share of responses per rating 1–5, and unparsed ones as ``null``)."""
    from matplotlib.figure import Figure

    total = sum(counts.values()) or 1
    shares = [100 * counts.get(label, 0) / total for label in RATING_LABELS]
    figure = Figure(figsize=(4.8, 3.0), dpi=100)
    axes = figure.subplots()
    bars = axes.bar(RATING_LABELS, shares, color=["#c0392b", "#e67e22", "#f1c40f", "#27ae60", "#1e8449", "#7f8c8d"])
    axes.bar_label(bars, labels=[f"{counts.get(label, 0):,}" for label in RATING_LABELS], fontsize=8)
    axes.set_title(distribution_title(aspect, counts), fontsize=10)
    axes.set_xlabel("rating (null = judge output did not parse)", fontsize=8)
    axes.set_ylabel("% of responses", fontsize=8)
    axes.set_ylim(0, max(shares) * 1.18 or 1)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
