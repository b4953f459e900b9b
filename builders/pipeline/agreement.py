"""``vlfeedback agreement``: how often the judge prefers what humans preferred, overall and per aspect, with a CI.

Human labels (CSV or JSONL), one pairwise judgement per row::

    id,model_a,model_b,preferred[,aspect]
    svit-12,gpt4v,fuyu-8b,a,Helpfulness

``preferred`` is ``a``, ``b``, ``tie`` or one of the two model names; ``aspect`` is an aspect name or ``overall``
(the default). The judge prefers the response with the higher rating (overall: the mean of the three aspects, as
the paper's pairing). Agreement counts the pairs where neither side is a tie — the usual convention, and how the
paper's 76% reads — and ties are reported beside it. A per-aspect line uses that aspect's human labels when the
file has them, else the overall labels (how well that one aspect predicts the human preference).

``--out FILE`` writes the results (atomically) with what they were measured on — the judged folder's name and the
label file's name, sha256 and number of labels (:func:`agreement_record`), never a path — which is what the dataset
card cites when the file is the built folder's ``agreement.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.builders.ratings import parse_rating
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.stats import bootstrap_ci

OVERALL = "overall"
GROUPS: tuple[str, ...] = (OVERALL, *ASPECTS)


@dataclass(frozen=True)
class Label:
    """One human pairwise judgement."""

    item_id: str
    model_a: str
    model_b: str
    preferred: str
    aspect: str


def preference(score_a: float, score_b: float) -> str:
    """``a``, ``b`` or ``tie`` from two scores."""
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def judge_scores(ratings: dict[str, int | None], aspect: str) -> float | None:
    """A response's score for an aspect, or the mean of all three for ``overall``; None when a rating is missing."""
    needed = ASPECTS if aspect == OVERALL else (aspect,)
    values = [ratings.get(a) for a in needed]
    return None if None in values else float(np.mean(values))


def agreement(
    labels: list[Label], judged: dict[str, dict[str, dict[str, int | None]]], resamples: int = 1000, seed: int = 0
) -> dict:
    """Agreement per group (``overall`` and each aspect): decisive pairs, agreement, 95% CI, ties, unmatched."""
    has_own = {label.aspect for label in labels}
    results = {}
    for group in GROUPS:
        label_aspect = group if group in has_own else OVERALL
        agree, human_ties, judge_ties, unmatched = [], 0, 0, []
        for label in (lab for lab in labels if lab.aspect == label_aspect):
            models = judged.get(label.item_id, {})
            scores = [judge_scores(models[m], group) if m in models else None for m in (label.model_a, label.model_b)]
            if None in scores:
                unmatched.append(label.item_id)
            elif label.preferred == "tie":
                human_ties += 1
            elif (judge := preference(*scores)) == "tie":
                judge_ties += 1
            else:
                agree.append(judge == label.preferred)
        decisive = np.array(agree, dtype=float)
        results[group] = {
            "human_labels": label_aspect,
            "pairs": len(agree),
            "agree": int(decisive.sum()),
            "agreement": float(decisive.mean()) if len(agree) else None,
            "ci95": list(bootstrap_ci(decisive, resamples, seed)) if len(agree) else None,
            "human_ties": human_ties,
            "judge_ties": judge_ties,
            "unmatched": len(unmatched),
            "unmatched_ids": sorted(set(unmatched)),
        }
    return results


def check_matched(labels: list[Label], results: dict) -> None:
    """Refuse a comparison in which no label matched a judged row (wrong folder, other ids or model names)."""
    if labels and all(
        r["unmatched"] == len([lab for lab in labels if lab.aspect == r["human_labels"]]) for r in results.values()
    ):
        ids = sorted({label.item_id for label in labels})
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise UserError(
            f"none of the {len(labels)} labels matches a judged row with ratings for both models (ids: {shown}); "
            "check --judge is the annotated folder and that the ids and model names agree"
        )


def read_labels(path: Path) -> list[Label]:
    """Human labels from a CSV or JSONL file (see the module docstring for the columns), or from the Silkie-vs-base
    Space's votes (a votes folder or its Hub dataset id)."""
    # builders' one import of eval: the arena's public vote reader, which imports only the kit's floor
    from vlfeedback_kit.eval.arena.votes import is_votes_source, read_votes, vote_labels

    if is_votes_source(path):
        return _labels_from_records(path, vote_labels(read_votes(path)))
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            records = (
                [json.loads(line) for line in handle if line.strip()]
                if path.suffix == ".jsonl"
                else list(csv.DictReader(handle))
            )
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(
            f"--human {path}: cannot read it as {'JSONL' if path.suffix == '.jsonl' else 'CSV'} ({err})"
        ) from err
    return _labels_from_records(path, records)


def _labels_from_records(path: Path, records: list[dict]) -> list[Label]:
    aspects = {a.lower(): a for a in GROUPS}
    labels = []
    for number, record in enumerate(records, start=1):
        missing = [c for c in ("id", "model_a", "model_b", "preferred") if not record.get(c)]
        if missing:
            raise UserError(f"--human {path}: record {number} lacks {', '.join(missing)}")
        a, b, preferred = str(record["model_a"]), str(record["model_b"]), str(record["preferred"]).strip()
        preferred = {a: "a", b: "b"}.get(preferred, preferred.lower())
        aspect = aspects.get(str(record.get("aspect") or OVERALL).strip().lower())
        if preferred not in ("a", "b", "tie") or aspect is None:
            raise UserError(
                f"--human {path}: record {number}: preferred must be a, b, tie or a model name, and aspect one of "
                f"{', '.join(GROUPS)}"
            )
        labels.append(Label(str(record["id"]), a, b, preferred, aspect))
    return labels


def read_judged(folder: Path) -> dict[str, dict[str, dict[str, int | None]]]:
    """id → model → aspect → rating, from an annotated release folder (or its jsonl)."""
    from vlfeedback_kit.builders.pipeline.layout import open_input

    jsonl = folder if folder.is_file() else open_input(folder, "--judge").jsonl
    judged: dict[str, dict[str, dict[str, int | None]]] = {}
    with jsonl.open(encoding="utf-8") as handle:
        for line in filter(str.strip, handle):
            row = json.loads(line)
            judged[row["id"]] = {
                c["model"]: {a: parse_rating((c.get("annotations") or {}).get(a, {}).get("Rating")) for a in ASPECTS}
                for c in row.get("completions", [])
            }
    if not any(v is not None for models in judged.values() for ratings in models.values() for v in ratings.values()):
        raise UserError(
            f"--judge {folder}: {len(judged)} rows and not one rating — annotate it first (vlfeedback annotate), "
            "and pass the annotated folder"
        )
    return judged


def format_table(results: dict) -> str:
    """The results as a small text table."""
    lines = [f"{'':<24}{'pairs':>7}{'agree':>9}{'95% CI':>17}{'human ties':>12}{'judge ties':>12}{'unmatched':>11}"]
    for group, r in results.items():
        share = f"{r['agreement']:.1%}" if r["agreement"] is not None else "-"
        ci = f"{r['ci95'][0]:.1%}–{r['ci95'][1]:.1%}" if r["ci95"] else "-"
        name = group if r["human_labels"] == group else f"{group} (vs {r['human_labels']})"
        lines.append(
            f"{name:<24}{r['pairs']:>7}{share:>9}{ci:>17}{r['human_ties']:>12}{r['judge_ties']:>12}{r['unmatched']:>11}"
        )
    unmatched = sorted({i for r in results.values() for i in r["unmatched_ids"]})
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (f" and {len(unmatched) - 20} more" if len(unmatched) > 20 else "")
        lines.append(f"unmatched (id not judged, or a model without ratings): {shown}")
    return "\n".join(lines)


def labels_digest(path: Path, labels: list[Label]) -> tuple[str, str]:
    """``(sha256, of what)``: the label file's bytes, or, for labels read from a votes folder or Hub votes repo,
    the labels themselves (sorted JSON), which is what was compared."""
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest(), "file"
    canonical = json.dumps(sorted((asdict(label) for label in labels), key=json.dumps), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), "labels"


def judged_names(judge: Path) -> dict[str, str]:
    """The judged release by name, never by path: its folder's name and its jsonl's file name."""
    from vlfeedback_kit.builders.pipeline.layout import open_input

    judge = judge.resolve()
    jsonl = judge if judge.is_file() else open_input(judge, "--judge").jsonl
    return {"folder": jsonl.parent.name, "file": jsonl.name}


def agreement_record(results: dict, judge: Path, human: Path, labels: list[Label]) -> dict:
    """What ``--out`` writes: the results and what they were measured on (names and a hash, no path)."""
    sha256, of = labels_digest(human, labels)
    name = human.resolve().name if human.exists() else str(human)  # a Hub votes repo is named by its id
    return {
        "judged": judged_names(judge),
        "labels": {"file": name, "sha256": sha256, "sha256_of": of, "count": len(labels)},
        "results": results,
    }
