"""``vlfeedback eval report``: the scores of one or more eval folders as ``results.json``, ``report.md``, plots
and ``eval_results.json`` (what ``vlfeedback publish model RUN --eval-results`` turns into ``model-index``).

It computes nothing new: every number is read from a ``scores.json`` (itself traceable to ``responses.jsonl`` and
``judgements.jsonl`` beside it). The paper's numbers come from the benchmark YAMLs and are shown apart, labelled
as the paper's — never as ours, and never in ``model-index``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.generation import BASE_LABEL, SILKIE_LABEL
from vlfeedback_kit.eval.scoring import BENCHMARKS, SCORES
from vlfeedback_kit.eval.spec import load_spec
from vlfeedback_kit.files import write_bytes, write_json, write_text

RESULTS, REPORT, EVAL_RESULTS = "results.json", "report.md", "eval_results.json"
HEALTH_ROWS: dict[str, list[str]] = {
    "mme": ["other"],
    "mmhal": ["unparsed"],
    "mmvet": ["std", "runs", "unparsed"],
    "redteam": ["refusal_rate", "unparsed"],
    "winrate": [
        "wins",
        "ties",
        "losses",
        "win_rate_ci",
        "elo_gap",
        "length_controlled.win_rate_ci",
        "length_controlled.elo_gap",
        "length_controlled.style_coefficients",
        "length_controlled.note",
        "hidden",
        "unparsed",
    ],
}
"""Rows shown under a benchmark's card metrics: spread, the counts that make a broken judge or format visible
(``a.b``: key ``b`` of the ``a`` record)."""
STYLE_CONTROL_NOTE = (
    "length_controlled: the same battles fitted with the answers' differences in length and Markdown (headers, list "
    "items, bold) as extra Bradley–Terry features (LMArena's style control), read at equal style; a raw win rate "
    "well above the length-controlled one means the judge rewarded longer or more formatted answers. "
    "style_coefficients > 0: the judge favours more of that feature."
)


def collect(folders: list[Path]) -> dict[str, dict[str, dict]]:
    """``{label: {benchmark: scores}}`` over the eval folders (a label seen twice is prefixed with its folder)."""
    results: dict[str, dict[str, dict]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such eval folder (written by `vlfeedback eval run --out`)")
        found = sorted(folder.glob(f"*/*/{SCORES}"))
        if not found:
            raise UserError(f"{folder}: no <label>/<benchmark>/scores.json; run `vlfeedback eval run` first")
        for path in found:
            label, benchmark = path.parent.parent.name, path.parent.name
            key = label if label not in results or benchmark not in results[label] else f"{folder.name}/{label}"
            results.setdefault(key, {})[benchmark] = json.loads(path.read_text(encoding="utf-8"))
    return results


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "—" if value is None or value == "" else str(value)


def _row(scores: dict, key: str) -> object:
    """The value a report row names: ``key`` of ``scores``, or for ``a.b`` key ``b`` of the ``a`` record."""
    head, _, rest = key.partition(".")
    value = scores.get(head)
    return (value or {}).get(rest) if rest else value


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """The report: one table per benchmark (labels as columns), health counts, then the paper's numbers."""
    labels = list(results)
    lines = ["# Evaluation report", "", "Every number below is read from `<label>/<benchmark>/scores.json`, which is "
             "computed from the `responses.jsonl` and `judgements.jsonl` beside it.", ""]  # fmt: skip
    for benchmark in BENCHMARKS:
        present = [label for label in labels if benchmark in results[label]]
        if not present:
            continue
        spec = load_spec(benchmark)
        lines += [f"## {spec['title']}", "", "| metric | " + " | ".join(present) + " |",
                  "|---|" + "---|" * len(present)]  # fmt: skip
        rows = [m["key"] for m in spec["metrics"]]
        for key in rows + HEALTH_ROWS.get(benchmark, []) + ["failed"]:
            values = [_row(results[label][benchmark], key) for label in present]
            lines.append(f"| {key} | " + " | ".join(_fmt(v) for v in values) + " |")
        if any(results[label][benchmark].get("length_controlled") for label in present):
            lines += ["", STYLE_CONTROL_NOTE]
        for label in present:
            scores = results[label][benchmark]
            if not scores.get("complete", True):
                lines.append(f"\n**{label}: incomplete** — {scores.get('not_judged')} gradings not settled "
                             f"({scores.get('first_error')}); no scores until a re-run judges them.")  # fmt: skip
            if scores.get("missing_subtasks"):
                lines.append(
                    f"\n{label}: subtasks missing from the data: {', '.join(scores['missing_subtasks'])} "
                    "(the totals cover only the subtasks present; not comparable with full-MME totals)."
                )
            if scores.get("judge_snapshot_warning"):
                lines.append(f"\n**{label}: {scores['judge_snapshot_warning']}**")
            if scores.get("judge_model_requested"):
                lines.append(f"\n{label}: judge `{scores['judge_model_requested']}` requested, answered by "
                             f"{', '.join(f'`{m}`' for m in scores.get('judge_models_resolved', [])) or '—'}; "
                             f"scorer: {scores.get('scorer', '—')}.")  # fmt: skip
        reported = spec.get("reported")
        if reported:
            lines += ["", f"Reported in the paper (reference only, not our result; {reported['source']}):", "",
                      "| metric | base | silkie |", "|---|---|---|"]  # fmt: skip
            for key in reported.get("silkie", {}):
                lines.append(f"| {key} | {_fmt(reported['base'].get(key))} | {_fmt(reported['silkie'].get(key))} |")
        lines.append("")
    return "\n".join(lines)


def eval_results(results: dict[str, dict[str, dict]], label: str | None = None) -> dict:
    """The card's eval-results JSON for one label (default: silkie, else the only one): our complete scores as
    ``results`` (→ model-index), the paper's numbers as ``reference`` (card body only), and the benchmarks left
    out with why (``skipped``: unsettled judging, an MME run missing subtasks)."""
    label = label or (SILKIE_LABEL if SILKIE_LABEL in results else next(iter(results)))
    out, reference, skipped = [], [], []
    for benchmark, scores in results.get(label, {}).items():
        spec = load_spec(benchmark)
        reported = spec.get("reported") or {}
        for side in (BASE_LABEL, SILKIE_LABEL):
            for key, value in (reported.get(side) or {}).items():
                name = next(m["name"] for m in spec["metrics"] if m["key"] == key)
                reference.append({"model": side, "benchmark": spec["title"], "metric": name, "value": value,
                                  "source": reported["source"], "source_url": reported["source_url"]})  # fmt: skip
        if not scores.get("complete", True):
            skipped.append({"benchmark": benchmark, "reason": "incomplete: some gradings are not settled"})
            continue
        if scores.get("missing_subtasks"):
            skipped.append(
                {"benchmark": benchmark, "reason": "subtasks missing: " + ", ".join(scores["missing_subtasks"])}
            )  # a partial total under the benchmark's name would mislead
            continue
        for metric in spec["metrics"]:
            value = scores.get(metric["key"])
            if value is None:
                continue
            entry = {
                "task_type": spec["task_type"],
                "dataset_type": spec["data"].get("hub") or f"vlfeedback-kit/{benchmark}",
                "dataset_name": spec["title"],
                "dataset_split": "test",
                "metric_type": metric["type"],
                "metric_name": metric["name"],
                "metric_value": round(value, 4),
            }
            if scores.get("judge_model_requested"):
                entry["metric_args"] = {
                    "judge_model": scores["judge_model_requested"],
                    "judge_model_resolved": ", ".join(scores.get("judge_models_resolved", [])),
                }
            out.append(entry)
    return {"label": label, "results": out, "reference": reference, "skipped": skipped}


def plots(results: dict[str, dict[str, dict]], folder: Path) -> list[Path]:
    """Grouped bars per label: MME subtasks, MM-Vet capabilities, MMHal-Bench question types."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for benchmark, key, title in (("mme", "subtasks", "MME subtask scores"),
                                  ("mmvet", "capabilities", "MM-Vet capability scores"),
                                  ("mmhal", "per_type", "MMHal-Bench score per question type")):  # fmt: skip
        labels = [label for label in results if results[label].get(benchmark, {}).get(key)]
        if not labels:
            continue
        names = list(results[labels[0]][benchmark][key])
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.7), 3.5))
        width = 0.8 / len(labels)
        for n, label in enumerate(labels):
            values = [results[label][benchmark][key].get(name, 0) for name in names]
            ax.bar([i + n * width for i in range(len(names))], values, width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45, ha="right")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = folder / f"{benchmark}_{key}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=100, format="png")
        write_bytes(path, buffer.getvalue())
        plt.close(fig)
        written.append(path)
    return written


def report(folders: list[Path], out: Path | None = None, label: str | None = None) -> dict:
    """Write results.json, report.md, the plots and eval_results.json into ``out`` (default: the first folder)."""
    folders = [Path(f) for f in folders]
    out = Path(out) if out else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    results = collect(folders)
    write_json(out / RESULTS, results)
    write_text(out / REPORT, markdown(results) + "\n")
    written = plots(results, out)
    write_json(out / EVAL_RESULTS, eval_results(results, label))
    return {"results": str(out / RESULTS), "report": str(out / REPORT), "plots": [str(p) for p in written],
            "eval_results": str(out / EVAL_RESULTS)}  # fmt: skip
