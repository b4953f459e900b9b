"""``vlfeedback rounds --dry-run``: what each round would do, which stages are already done, and what judging would
cost — no model is loaded and no call is made.

Per round: the generations (prompts × samples), the judge calls of ``annotate`` (one per prompt, priced by the
pipeline's own estimate: ``annotate --dry-run`` on a round whose answers exist, else the same token rule with each
answer at ``max_new_tokens``) and the win-rate judge calls (2 orders × held-out prompts × comparisons). Training
and generation are local compute, counted, not priced.
"""

from __future__ import annotations

import io
from pathlib import Path

from vlfeedback_kit.rounds import inputs, judge, loop
from vlfeedback_kit.rounds.config import RoundsConfig

CHARS_PER_ANSWER_TOKEN = 4
WINRATE_REPLY_TOKENS = 300


def prompt_shapes(folder: Path) -> list[tuple[int, tuple[int, int]]]:
    """(prompt characters, image size) of every usable prompt of a release-layout folder."""
    from PIL import Image

    from vlfeedback_kit.builders.pipeline.layout import open_input
    from vlfeedback_kit.rounds.generate import read_prompts

    with open_input(folder) as source:
        usable, _ = read_prompts(source)
    shapes = [(len(line.row["prompt"]), Image.open(io.BytesIO(image)).size) for line, image in usable]
    return shapes


def dry_run(config: RoundsConfig, out: Path) -> dict:
    """The plan and cost estimate of every round of ``config`` in ``out``."""
    from vlfeedback_kit.builders.pipeline.cost import (
        DEFAULT_TILES,
        call_cost,
        estimate_prompt_tokens,
        estimate_tokens,
        load_prices,
        price_for,
    )
    from vlfeedback_kit.builders.pipeline.judge import TEMPLATE_FILE

    config = inputs.resolve(config, out)
    price = price_for(config.judge.model, load_prices(Path(config.judge.prices) if config.judge.prices else None))
    tiles = price or DEFAULT_TILES
    prompts, heldout = prompt_shapes(config.prompts), prompt_shapes(config.heldout)
    answer_chars = config.generation.max_new_tokens * CHARS_PER_ANSWER_TOKEN
    template = len(TEMPLATE_FILE.read_text(encoding="utf-8"))
    rounds, total = [], 0.0
    for k in range(1, config.rounds + 1):
        folder = loop.round_dir(out, k)
        done = [stage for stage in loop.STAGES if (folder / f"{stage}.done.json").is_file()]
        if (folder / "answers" / "responses.jsonl").is_file() and "judge" not in done:
            judged = judge.estimate_round(config, folder / "answers", folder / "judged")
            tokens = (judged["estimated_prompt_tokens"], judged["estimated_completion_tokens"])
        elif "judge" in done:
            tokens = (0, 0)
        else:
            per_call = [estimate_tokens(template + chars + config.samples * answer_chars, size, config.samples,
                                        "high", tiles) for chars, size in prompts]  # fmt: skip
            tokens = (sum(p for p, _ in per_call), sum(c for _, c in per_call))
        comparisons = 0 if "evaluate" in done else (1 if k == 1 and not config.start_adapter else 2)
        eval_prompt = sum(estimate_prompt_tokens(chars + 2 * answer_chars + 600, [size], "high", tiles)
                          for chars, size in heldout) * 2 * comparisons  # fmt: skip
        eval_completion = len(heldout) * 2 * comparisons * WINRATE_REPLY_TOKENS
        cost = call_cost(tokens[0] + eval_prompt, tokens[1] + eval_completion, price)
        total += cost or 0.0
        policy = loop.policy_of(config, out, k)
        rounds.append({
            "round": k, "done": done, "policy": {"model": policy["model_name"], "adapter": policy["adapter_name"]},
            "generations": 0 if "generate" in done else len(prompts) * config.samples,
            "judge_calls": 0 if "judge" in done else len(prompts),
            "train": "done" if "train" in done else f"recipe {config.train.recipe}, reference {config.train.reference}"
            + (f", from {policy['adapter_name']}" if policy["adapter"] else ", fresh LoRA"),
            "winrate_judge_calls": len(heldout) * 2 * comparisons,
            "estimated_judge_tokens": {"prompt": tokens[0] + eval_prompt, "completion": tokens[1] + eval_completion},
            "estimated_cost_usd": None if cost is None else round(cost, 4),
        })  # fmt: skip
    return {"dry_run": True, "judge_model": config.judge.model, "rounds": rounds,
            "estimated_total_usd": round(total, 4) if price else None,
            "assumes": "each answer max_new_tokens long, 4 characters a token, the price table's image tile rule, "
                       "one judge call per item (no re-asks)"}  # fmt: skip
