"""sample → build → vanilla `load_dataset` in a fresh process → TRL DPO step; counts checked by an own recount."""

import json
import math
import subprocess
import sys
import textwrap
from itertools import combinations
from pathlib import Path

import pytest
from support.dpo import cpu_dpo_config

CLI = [sys.executable, "-m", "vlfeedback_kit.cli"]
LOAD_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    from datasets import load_dataset
    from PIL.Image import Image

    pairs = load_dataset("vlfeedback", "pairs")  # by name, from the parent folder
    raw = load_dataset(sys.argv[1], "raw")       # by path
    first = pairs["train"][0]
    completion = raw["train"][0]["completions"][0]
    print(json.dumps({
        "pairs": {split: ds.num_rows for split, ds in pairs.items()},
        "raw": {split: ds.num_rows for split, ds in raw.items()},
        "pair_image_is_pil": isinstance(first["images"][0], Image),
        "raw_image_is_pil": isinstance(raw["train"][0]["image"], Image),
        "rating_type": type(completion["annotations"]["Helpfulness"]["Rating"]).__name__,
        "rating_feature": str(raw["train"].features["completions"]),
        "null_ratings": sum(
            c["annotations"][a]["Rating"] is None
            for row in raw["train"] for c in row["completions"] for a in c["annotations"]
        ),
        "prompt": first["prompt"],
        "chosen_score_gt_rejected": all(r["chosen_score"] > r["rejected_score"] for r in pairs["train"]),
    }))
    """
)


def paper_rule_recount(jsonl: Path) -> int:
    """The original run_dpo.py rule, written independently of the kit: int() ratings, mean, no ties, no duplicates."""
    total = 0
    for line in jsonl.read_text().splitlines():
        completions = json.loads(line)["completions"]
        scores = []
        for completion in completions:
            try:
                ratings = [int(v["Rating"]) for v in completion["annotations"].values()]
                scores.append(sum(ratings) / 3 if all(1 <= r <= 5 for r in ratings) else None)
            except ValueError:
                scores.append(None)
        for a, b in combinations(range(len(completions)), 2):
            same_text = completions[a]["response"].strip() == completions[b]["response"].strip()
            if scores[a] is not None and scores[b] is not None and scores[a] != scores[b] and not same_text:
                total += 1
    return total


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The README's main job: the embedded sample, built into ./vlfeedback with an extra pairing config."""
    root = tmp_path_factory.mktemp("e2e")
    for args in (
        ["sample", "--out", "sample_release", "--num-instructions", "200"],
        [
            "build",
            "--source",
            "sample_release",
            "--out",
            "vlfeedback",
            "--quiet",
            "--pairs",
            "best-vs-worst",
            "--eval-fraction",
            "0.05",
        ],
    ):
        done = subprocess.run([*CLI, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return root


def test_vanilla_load_dataset_in_a_fresh_process(built):
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(built / "vlfeedback")], cwd=built, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads((built / "vlfeedback" / "build_report.json").read_text())
    assert loaded["pairs"] == report["splits"]["pairs"] and loaded["raw"] == report["splits"]["raw"]
    assert sum(loaded["raw"].values()) == 200 and set(loaded["raw"]) == {"train", "test"}
    assert loaded["pair_image_is_pil"] and loaded["raw_image_is_pil"]
    assert loaded["rating_type"] in ("int", "NoneType") and "int8" in loaded["rating_feature"]
    assert loaded["null_ratings"] == sum(report["null_ratings"].values()) > 0
    assert loaded["prompt"][0]["content"][0] == {"type": "image", "text": None}
    assert loaded["chosen_score_gt_rejected"]


def test_pair_count_equals_an_independent_recount(built):
    report = json.loads((built / "vlfeedback" / "build_report.json").read_text())
    expected = paper_rule_recount(built / "sample_release" / "vlfeedback_sample.jsonl")
    assert sum(report["splits"]["pairs"].values()) == expected
    policies = json.loads((built / "vlfeedback" / "pairing_policies.json").read_text())
    assert policies["pairs"]["counts"]["pairs"] == expected
    assert policies["best-vs-worst"]["counts"]["pairs"] <= 200


def test_pairs_do_not_multiply_image_bytes(built):
    sizes = {
        c: sum(p.stat().st_size for p in (built / "vlfeedback" / "data" / c).glob("*.parquet"))
        for c in ("raw", "pairs")
    }
    report = json.loads((built / "vlfeedback" / "build_report.json").read_text())
    assert sum(report["splits"]["pairs"].values()) > 4 * 200 * 0.9  # ~5 pairs per instruction share one image
    assert sizes["pairs"] <= 1.2 * sizes["raw"]


@pytest.mark.parametrize("threshold", [1.0, 2.0, 4 / 3])
def test_a_margin_filter_on_the_loaded_column_agrees_with_the_policy(built, threshold):
    import numpy as np
    from datasets import load_dataset

    from vlfeedback_kit.builders.hub_folder import add_pairing_config
    from vlfeedback_kit.builders.inspect import MARGIN_BINS, summarize
    from vlfeedback_kit.builders.pairing import PairingPolicy

    folder = built / "vlfeedback"
    loaded = load_dataset(str(folder), "pairs", columns=["margin", "chosen_score", "rejected_score"])
    assert loaded["train"].features["margin"].dtype == "float64"
    margins = np.concatenate([split.with_format("numpy")["margin"] for split in loaded.values()])
    policy = add_pairing_config(folder, "m", PairingPolicy(min_margin=threshold), dry_run=True)
    assert int((margins >= threshold).sum()) == policy["counts"]["pairs"]
    if threshold in MARGIN_BINS:  # inspect's histogram puts a margin of exactly 2 in [2, 2.5), not in [1.5, 2)
        histogram = summarize(str(folder))["pairing"]["pairs"]["margin_histogram"]
        above = sum(n for edges, n in histogram.items() if float(edges[1:].split(",")[0]) >= threshold)
        assert above == policy["counts"]["pairs"]
    assert float(margins.min()) > 0 and not np.any((margins > threshold - 1e-6) & (margins < threshold))


def test_builder_class_gives_the_same_pairs_as_the_published_config(built, tmp_path):
    from datasets import load_dataset

    from vlfeedback_kit.builders.builder import VLFeedback

    builder = VLFeedback(
        config_name="best-vs-worst", source=str(built / "sample_release"), eval_fraction=0.05, cache_dir=str(tmp_path)
    )
    builder.download_and_prepare()
    direct = builder.as_dataset()
    published = load_dataset(str(built / "vlfeedback"), "best-vs-worst", cache_dir=str(tmp_path / "published"))
    for split in ("train", "test"):
        assert direct[split]["id"] == published[split]["id"]
        assert direct[split]["chosen"] == published[split]["chosen"]


def test_inspect_reports_what_a_trainer_needs(built):
    done = subprocess.run([*CLI, "inspect", "vlfeedback", "--json"], cwd=built, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    report = json.loads((built / "vlfeedback" / "build_report.json").read_text())
    assert summary["configs"] == report["splits"]
    assert sum(summary["sources"].values()) == 200
    responses = sum(sum(d.values()) for d in summary["ratings"].values())
    assert responses == 200 * 4 * 3
    pairs = summary["pairing"]["pairs"]
    assert pairs["pairs"] == sum(report["splits"]["pairs"].values()) == sum(pairs["margin_histogram"].values())
    assert summary["example"]["prompt"] and "JPEG" in summary["example"]["image"]
    text = subprocess.run([*CLI, "inspect", "vlfeedback"], cwd=built, capture_output=True, text=True).stdout
    assert "rows per source" in text and "margin" in text and "example pair" in text


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_trl_dpo_trainer_takes_a_real_step_on_the_pairs_config(built, family, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    from vlfeedback_kit.training.tiny_model import build_tiny_model

    model_dir = build_tiny_model(family, tmp_path / family)
    dataset = load_dataset(str(built / "vlfeedback"), "pairs", split="train").select(range(4))
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("lm_head")}
    args = cpu_dpo_config(tmp_path / "run")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=AutoProcessor.from_pretrained(model_dir)
    )
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)


def test_a_dataset_folder_named_vlfeedback_does_not_shadow_the_kit(built):
    """The README builds into ./vlfeedback: the kit's import name must not collide with that folder."""
    code = textwrap.dedent(
        """\
        import vlfeedback_kit.training.dpo
        from datasets import load_dataset
        print(load_dataset("vlfeedback", "pairs")["train"].num_rows)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=built, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((built / "vlfeedback" / "build_report.json").read_text())
    assert int(done.stdout.split()[-1]) == report["splits"]["pairs"]["train"]
    helped = subprocess.run([*CLI, "--help"], cwd=built, capture_output=True, text=True)
    assert helped.returncode == 0 and "build" in helped.stdout
