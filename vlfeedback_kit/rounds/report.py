"""``OUT/report.md`` (a table across rounds, the plot, the best round) and ``report.json``.

The best round is named by ``eval.pick_by``: the win rate vs the base (default) or vs the previous round, the
upper end of ties broken by the earlier round (the cheaper policy). Each win rate is shown with its bootstrap 95% CI,
the mean answer length beside it (DPO rounds make answers longer), and the length-controlled win rate when the
eval folder can tell it (style control: :func:`vlfeedback_kit.eval.pairwise.length_controlled`).
"""

from __future__ import annotations

from pathlib import Path

from vlfeedback_kit.files import write_json, write_text
from vlfeedback_kit.rounds.config import RoundsConfig

PLOT = "rounds.png"


def pick_value(record: dict, pick_by: str) -> float:
    """The number ``pick_by`` ranks a round by: a win rate, or ``BENCHMARK:KEY`` of the round's benchmark scores."""
    if ":" in pick_by:
        name, _, key = pick_by.partition(":")
        scores = record["eval"].get("benchmarks", {}).get(name, {})
        if key not in scores:
            from vlfeedback_kit.errors import UserError

            raise UserError(f"eval.pick_by {pick_by}: {name}'s scores have no number {key!r} (they have "
                            f"{', '.join(scores) or 'none'})")  # fmt: skip
        return scores[key]
    key = {"winrate_vs_base": "vs_base", "winrate_vs_previous": "vs_previous"}[pick_by]
    return record["eval"][key]["win_rate"]


def summary(records: list[dict], config: RoundsConfig) -> dict:
    """The rounds' win rates and the best round by ``eval.pick_by``."""
    sign = -1 if config.eval.pick_order == "min" else 1
    best = max(records, key=lambda r: (sign * pick_value(r, config.eval.pick_by), -r["round"]))
    return {"rounds": [{"round": r["round"], "pairs": r["pairs"], "vs_base": r["eval"]["vs_base"],
                        "vs_previous": r["eval"]["vs_previous"], "mean_words": r["eval"]["mean_words"]}
                       for r in records],
            "best_round": best["round"], "pick_by": config.eval.pick_by,
            "pick_order": config.eval.pick_order}  # fmt: skip


def _cell(result: dict) -> str:
    """A win rate with its CI and W/T/L, and the length-controlled win rate (or why it cannot be told)."""
    low, high = result["win_rate_ci"]
    text = f"{result['win_rate']:.3f} [{low:.3f}, {high:.3f}] ({result['wins']}/{result['ties']}/{result['losses']})"
    controlled = result.get("length_controlled") or {}
    if controlled.get("win_rate") is not None:
        low, high = controlled["win_rate_ci"]
        return f"{text}; LC {controlled['win_rate']:.3f} [{low:.3f}, {high:.3f}]"
    return f"{text}; LC n/a" + (f" ({controlled['note']})" if controlled.get("note") else "")


def plot(path: Path, records: list[dict]) -> None:
    """Win rate vs base and vs previous (with CIs) across rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in records]
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for key, name in (("vs_base", "vs base"), ("vs_previous", "vs previous round")):
        rates = [r["eval"][key]["win_rate"] for r in records]
        errors = [
            [rate - r["eval"][key]["win_rate_ci"][0] for rate, r in zip(rates, records, strict=True)],
            [r["eval"][key]["win_rate_ci"][1] - rate for rate, r in zip(rates, records, strict=True)],
        ]
        axis.errorbar(rounds, rates, yerr=errors, marker="o", capsize=3, label=name)
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axis.set(xlabel="round", ylabel="judged win rate", xticks=rounds, ylim=(0, 1))
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def benchmark_lines(records: list[dict], base: dict) -> list[str]:
    """The benchmarks table: one row per benchmark number, the base and each round as columns."""
    if not base:
        return []
    lines = ["| benchmark | number | base | " + " | ".join(f"round {r['round']}" for r in records) + " |",
             "|---|---|---|" + "---|" * len(records)]  # fmt: skip
    for name, numbers in base.items():
        for key, value in numbers.items():
            cells = [r["eval"].get("benchmarks", {}).get(name, {}).get(key) for r in records]
            shown = " | ".join("" if c is None else f"{c:.4g}" for c in cells)
            lines.append(f"| {name} | {key} | {value:.4g} | {shown} |")
    return ["", "Benchmarks (`vlfeedback eval run`'s scorers):", "", *lines]


def write_report(out: Path, records: list[dict], config: RoundsConfig, base: dict | None = None) -> dict:
    """Write ``report.md``, ``report.json`` and the plot for the finished rounds (``base``: the base's
    benchmark numbers)."""
    result = summary(records, config)
    plot(out / PLOT, records)
    lines = [
        "# On-policy rounds",
        "",
        f"Judge: `{config.judge.model}`; {config.samples} samples per prompt; held-out win rates judged in both "
        "orders (swap-consistent verdicts, ties as half), bootstrap 95% CI, (wins/ties/losses).",
        "",
        "| round | generated by | pairs | vs base | vs previous | mean words (round / base) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        words, label = r["eval"]["mean_words"], f"round-{r['round']}"
        generator = r["policy"]["adapter_name"] or "base"
        lines.append(f"| {r['round']} | {generator} | {r['pairs']} | {_cell(r['eval']['vs_base'])} | "
                     f"{_cell(r['eval']['vs_previous'])} | {words[label]:.1f} / "
                     f"{words['base']:.1f} |")  # fmt: skip
    lines += benchmark_lines(records, base or {})
    order = " (lowest)" if config.eval.pick_order == "min" else ""
    lines += ["", f"Best round by {config.eval.pick_by}{order}: **round {result['best_round']}** "
              f"(`round-{result['best_round']}/run`).", "", f"![win rates across rounds]({PLOT})", ""]  # fmt: skip
    write_text(out / "report.md", "\n".join(lines))
    write_json(out / "report.json", {**result, "base_benchmarks": base or {}})
    return result
