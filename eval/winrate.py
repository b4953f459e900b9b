"""Win-rate of Silkie against its base on held-out VLFeedback prompts, judged in both orders.

Data: the ``test`` split ``vlfeedback build --eval-fraction`` writes (``data/raw/test-*.parquet`` of a built
folder), or any folder / file of ``raw``-config Parquet (``id``, ``image``, ``prompt``). The judge (the kit's
pairwise template) sees the image, the prompt and the two answers, once with Silkie as A and once with the base
as A; :func:`vlfeedback_kit.eval.pairwise.swap_consistent` turns the two verdicts into one outcome (a verdict that
flips with the order is a tie). The statistics are :func:`vlfeedback_kit.eval.pairwise.summarize_battles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item, image_bytes_of, read_parquet_rows
from vlfeedback_kit.eval.pairwise import Battle, summarize_battles, swap_consistent

TEMPLATE_FILE = Path(__file__).parent / "judge_templates" / "winrate.txt"
ORDERS: tuple[str, ...] = ("ab", "ba")
"""``ab``: the model under test is answer A; ``ba``: it is answer B."""
_VERDICT = re.compile(r"verdict\s*[:：]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return TEMPLATE_FILE.read_text(encoding="utf-8").format(question=question, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(reply: str | None) -> str | None:
    """``model_a``, ``model_b`` or ``tie`` when the reply names exactly one verdict, else None."""
    found = {m.lower() for m in _VERDICT.findall(reply or "")}
    if len(found) != 1:
        return None
    return {"a": "model_a", "b": "model_b", "tie": "tie"}[found.pop()]


def outcome(ab: str, ba: str) -> str:
    """One outcome from the model's side as A: the ``ba`` verdict is mapped back to the ``ab`` positions."""
    return swap_consistent(ab, ba)


def score(
    verdicts: Mapping[str, tuple[str | None, str | None]], model: str, other: str, seed: int = 0, rounds: int = 1000
) -> dict:
    """W / T / L, win rate with a bootstrap 95% CI and the Bradley–Terry gap; unparsed verdicts counted and the
    item left out (never a silent tie)."""
    battles, unparsed = [], 0
    for ab, ba in verdicts.values():
        if ab is None or ba is None:
            unparsed += 1
            continue
        battles.append(Battle(model, other, outcome(ab, ba)))
    if not battles:
        raise UserError("winrate: no item has both verdicts parsed; nothing to score")
    summary = summarize_battles(battles, model, other, rounds=rounds, seed=seed)
    return {**summary.to_dict(), "unparsed": unparsed, "items": len(verdicts),
            "scorer": "kit convention: both orders, swap-consistent verdicts, ties as half"}  # fmt: skip


def load(path: Path) -> list[Item]:
    """Held-out prompts of a built folder's ``test`` split, or of any ``raw``-config Parquet."""
    path = Path(path)
    test = sorted((path / "data" / "raw").glob("test-*.parquet")) if path.is_dir() else []
    rows = [row for file in test for row in read_parquet_rows(file)] if test else read_parquet_rows(path)
    if not rows:
        raise UserError(f"--data winrate={path}: no Parquet rows (a built folder's data/raw/test-*.parquet)")
    items = []
    for number, row in enumerate(rows):
        if not row.get("prompt") or row.get("id") is None:
            raise UserError(f"{path}: row {number} lacks id/prompt; expected the raw config's columns")
        items.append(Item(str(row["id"]), row["prompt"], image_bytes=image_bytes_of(row.get("image"))))
    return items
