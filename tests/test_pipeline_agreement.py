"""``vlfeedback agreement``: judge preferences against human pairwise labels, hand-computed, with a bootstrap CI.

Run: pytest tests/test_pipeline_agreement.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from release_factory import row, write_release

from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.stats import bootstrap_ci

JUDGED = [
    row("i1", [(5, 5, 5), (3, 4, 5), (1, 1, 5)]),  # means 5, 4, 2.33
    row("i2", [(2, 2, 5), (4, 1, 5)]),  # means 3, 3.33
    row("i3", [(3, 3, 3), (3, 3, 3)]),  # a tie
]
LABELS = [
    {"id": "i1", "model_a": "model-0", "model_b": "model-1", "preferred": "a"},  # judge a: agree
    {"id": "i1", "model_a": "model-1", "model_b": "model-2", "preferred": "b"},  # judge a: disagree
    {"id": "i1", "model_a": "model-0", "model_b": "model-2", "preferred": "a"},  # agree
    {"id": "i2", "model_a": "model-0", "model_b": "model-1", "preferred": "model-1"},  # b, judge b: agree
    {"id": "i3", "model_a": "model-0", "model_b": "model-1", "preferred": "a"},  # judge tie
    {"id": "i2", "model_a": "model-0", "model_b": "model-1", "preferred": "tie"},  # human tie
    {"id": "i9", "model_a": "model-0", "model_b": "model-1", "preferred": "a"},  # not judged
    {"id": "i1", "model_a": "model-0", "model_b": "model-2", "preferred": "a", "aspect": "Visual Faithfulness"},
]


@pytest.fixture
def judged(tmp_path: Path) -> Path:
    return write_release(tmp_path / "judged", JUDGED)


def run(judged: Path, labels: Path, capsys: pytest.CaptureFixture) -> dict:
    assert cli_main(["agreement", "--judge", str(judged), "--human", str(labels), "--json", "--bootstrap", "200"]) == 0
    return json.loads(capsys.readouterr().out)


def test_agreement_overall_and_per_aspect_is_hand_computed(judged: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "model_a", "model_b", "preferred", "aspect"])
        writer.writeheader()
        writer.writerows(LABELS)
    results = run(judged, labels, capsys)
    overall = results["overall"]
    assert (overall["pairs"], overall["agree"], overall["agreement"]) == (4, 3, 0.75)
    assert (overall["human_ties"], overall["judge_ties"], overall["unmatched"]) == (1, 1, 1)
    assert 0 <= overall["ci95"][0] <= 0.75 <= overall["ci95"][1] <= 1
    helpful = results["Helpfulness"]
    assert (helpful["human_labels"], helpful["pairs"], helpful["agree"]) == ("overall", 4, 3)
    faithful = results["Visual Faithfulness"]
    assert (faithful["human_labels"], faithful["pairs"], faithful["agreement"]) == ("Visual Faithfulness", 1, 1.0)
    ethics = results["Ethical Considerations"]
    assert (ethics["pairs"], ethics["judge_ties"], ethics["agreement"], ethics["ci95"]) == (0, 5, None, None)

    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text("".join(json.dumps(label) + "\n" for label in LABELS))
    assert run(judged, jsonl, capsys) == results
    assert cli_main(["agreement", "--judge", str(judged), "--human", str(jsonl)]) == 0
    assert "75.0%" in capsys.readouterr().out


def test_the_bootstrap_interval_is_right_and_seeded() -> None:
    agree = np.array([1.0] * 304 + [0.0] * 96)  # 76%, as the paper
    low, high = bootstrap_ci(agree, 2000, seed=0)
    half = 1.96 * np.sqrt(0.76 * 0.24 / 400)
    assert low == pytest.approx(0.76 - half, abs=0.012) and high == pytest.approx(0.76 + half, abs=0.012)
    assert bootstrap_ci(agree, 2000, seed=0) == (low, high)
    assert bootstrap_ci(np.ones(30), 100, seed=1) == (1.0, 1.0)


def test_bad_labels_are_named(judged: Path, tmp_path: Path) -> None:
    from vlfeedback_kit.builders.pipeline.agreement import read_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("id,model_a,model_b,preferred\ni1,model-0,model-1,maybe\n")
    with pytest.raises(UserError, match="record 1: preferred must be a, b, tie or a model name"):
        read_labels(labels)
    labels.write_text("id,model_a,preferred\ni1,model-0,a\n")
    with pytest.raises(UserError, match="record 1 lacks model_b"):
        read_labels(labels)


def test_a_folder_without_ratings_is_refused_and_unmatched_ids_are_listed(
    judged: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(label) + "\n" for label in LABELS))
    unrated = [{**r, "completions": [{**c, "annotations": {}} for c in r["completions"]]} for r in JUDGED]
    folder = write_release(tmp_path / "decoded", unrated)
    assert cli_main(["agreement", "--judge", str(folder), "--human", str(labels)]) == 2
    assert "not one rating" in capsys.readouterr().err

    assert cli_main(["agreement", "--judge", str(judged), "--human", str(labels), "--bootstrap", "50"]) == 0
    assert "unmatched (id not judged, or a model without ratings): i9" in capsys.readouterr().out
    assert run(judged, labels, capsys)["overall"]["unmatched_ids"] == ["i9"]

    strangers = tmp_path / "strangers.jsonl"
    strangers.write_text(json.dumps({**LABELS[0], "id": "x1"}) + "\n" + json.dumps({**LABELS[0], "id": "x2"}) + "\n")
    assert cli_main(["agreement", "--judge", str(judged), "--human", str(strangers)]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 labels matches a judged row" in err and "(ids: x1, x2)" in err


def test_out_records_what_was_measured_and_the_card_cites_it(judged: Path, tmp_path: Path, capsys) -> None:
    """``--out`` writes the results with the judged folder's name and the label file's name, sha256 and count (no
    path); as the built folder's ``agreement.json`` the card cites them; a rebuild from another folder refuses it."""
    import hashlib

    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.cards.dataset import dataset_facts

    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(label) + "\n" for label in LABELS))
    built = tmp_path / "built"
    build(BuildOptions(source=str(judged), out_dir=built, progress=False))
    out = built / "agreement.json"
    args = ["agreement", "--judge", str(judged), "--human", str(labels), "--bootstrap", "200"]
    assert cli_main([*args, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)  # --json prints what it printed before
    record = json.loads(out.read_text())
    assert record["results"] == printed and str(tmp_path) not in out.read_text()
    sha256 = hashlib.sha256(labels.read_bytes()).hexdigest()
    assert record["judged"] == {"folder": "judged", "file": "vlfeedback_80k.jsonl"}
    assert record["labels"] == {"file": "labels.jsonl", "sha256": sha256, "sha256_of": "file", "count": len(LABELS)}
    measured = dataset_facts(built)["agreement"]
    assert (measured["agreement"], measured["pairs"], measured["labels_count"]) == (0.75, 4, len(LABELS))
    assert measured["citation"] == (
        f"labels `labels.jsonl` (sha256 {sha256[:12]}…, {len(LABELS)} labels) against `judged/vlfeedback_80k.jsonl`"
    )

    other = write_release(tmp_path / "other", JUDGED)
    build(BuildOptions(source=str(other), out_dir=built, progress=False, overwrite=True))
    assert (built / "agreement.json").is_file()  # kept across the rebuild, but not this release's measurement
    with pytest.raises(UserError, match="measured on the judged folder 'judged', but this release was built from"):
        dataset_facts(built)
