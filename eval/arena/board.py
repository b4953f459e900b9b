"""The leaderboard (:mod:`vlfeedback_kit.eval.pairwise`): Silkie against its base from the blind votes, raw and
length-controlled (style control on the two answers each vote holds), hidden below a minimum number of votes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlfeedback_kit.eval.arena.config import Contender
from vlfeedback_kit.eval.pairwise import MIN_BATTLES, Battle, PairwiseSummary, style_of, summarize_battles


@dataclass
class Board:
    """The leaderboard: Silkie against its base, or the reason its ratings are hidden."""

    summary: PairwiseSummary | None
    excluded: int
    """Votes left out because an answer named its model."""
    note: str = ""
    rows: list[list[Any]] = field(default_factory=list)


BOARD_HEADERS = ["Silkie vs base", "votes", "Silkie wins", "ties", "base wins", "both bad", "tie rate",
                 "win rate (ties ½)", "95% CI", "Elo gap (BT)", "95% CI",
                 "LC win rate", "95% CI", "LC Elo gap"]  # fmt: skip
"""LC: length-controlled (style control on the answers' length and Markdown); the board's note says how to read it."""


def _battle(vote: dict) -> Battle:
    """A vote as a battle, with both answers' styles when the vote holds both answers (every vote the kit stores)."""
    answers = vote.get("answer_a"), vote.get("answer_b")
    styles = (style_of(answers[0]), style_of(answers[1])) if all(isinstance(a, str) for a in answers) else ()
    return Battle(vote["model_a"], vote["model_b"], vote["winner"], *styles)


def _controlled(summary: PairwiseSummary) -> tuple[list[str], str]:
    """The length-controlled cells and what the note says about them."""
    controlled = summary.length_controlled
    if controlled is None:
        return ["—"] * 3, " LC (length-controlled): not shown, some votes lack the answers it is fitted on."
    low, high = controlled.win_rate_ci
    cells = [f"{controlled.win_rate:.1%}", f"[{low:.1%}, {high:.1%}]", f"{controlled.elo_gap:+.0f}"]
    return cells, (
        " LC (length-controlled): the same votes with the answers' differences in length and Markdown (headers, "
        "list items, bold) as extra Bradley–Terry features, read at equal style (LMArena's style "
        "control); well below the raw win rate means votes went to longer or more formatted answers."
        + (f" ({controlled.note}.)" if controlled.note else "")
    )


def board(
    votes: Sequence[dict], silkie: Contender, base: Contender, min_votes: int = MIN_BATTLES, rounds: int = 1000
) -> Board:
    """Win rate (ties as half), n, tie and both-bad rates, the Bradley–Terry gap with bootstrap 95% CIs of Silkie
    against its base, from the blind votes that compare exactly these two models and name neither (arena rules:
    named side-by-side votes and unblinded battles are kept in the data but not rated)."""
    ids = {silkie.record(), base.record()}
    relevant = [v for v in votes if {v.get("model_a"), v.get("model_b")} == ids and v.get("mode") == "battle"]
    counted = [v for v in relevant if not v.get("names_model")]
    excluded = len(relevant) - len(counted)
    if not counted:
        return Board(None, excluded, f"No votes yet. Ratings are shown from {min_votes} votes on.")
    battles = [_battle(v) for v in counted]
    summary = summarize_battles(battles, silkie.record(), base.record(), rounds=rounds, min_battles=min_votes)
    if summary.hidden:
        rates = ["hidden"] * 7
        note = f"Ratings hidden: {summary.hidden} (an unregularised fit on a handful of votes swings by ±1800 Elo)."
    else:
        low, high = summary.win_rate_ci
        gap_low, gap_high = summary.elo_gap_ci
        controlled, why = _controlled(summary)
        rates = [f"{summary.win_rate:.1%}", f"[{low:.1%}, {high:.1%}]", f"{summary.elo_gap:+.0f}",
                 f"[{gap_low:+.0f}, {gap_high:+.0f}]", *controlled]  # fmt: skip
        note = f"{summary.n} votes; Silkie against its base, ties counted as half a win.{why}"
    note += f" Silkie: `{silkie.record()}`; base: `{base.record()}`."
    if excluded:
        note += f" {excluded} vote{'s' if excluded != 1 else ''} left out: an answer named its model."
    row = [f"{silkie.name} vs {base.name}", summary.n, summary.wins, summary.ties - summary.both_bad, summary.losses,
           summary.both_bad, f"{summary.tie_rate:.1%}", *rates]  # fmt: skip
    return Board(summary, excluded, note, [row])
