"""The embedded sample: release layout, determinism, realism quirks, and ratings that follow the ground truth."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlfeedback_kit.builders.features import source_of
from vlfeedback_kit.builders.sample import (
    COLOURS,
    IMAGES_DIR,
    JSONL_NAME,
    MODEL_POOL,
    generate_instruction,
    render_scene,
    write_sample,
)
from vlfeedback_kit.errors import UserError

NUM = 300
ASPECTS = {"Helpfulness", "Ethical Considerations", "Visual Faithfulness"}
DIGITS = {"1", "2", "3", "4", "5"}


def parse(rating: str) -> int | None:
    """The rating as the original ``run_dpo.py`` reads it: an int, or None when it does not parse."""
    return int(rating) if rating in DIGITS else None


def mean_score(completion: dict) -> float | None:
    """Mean of the three aspect ratings, or None if any does not parse."""
    ratings = [parse(a["Rating"]) for a in completion["annotations"].values()]
    return None if None in ratings else sum(ratings) / 3


def first(pattern: str, text: str, flags: int = re.IGNORECASE) -> str | None:
    """The first match of a pattern, lower-cased, or None."""
    match = re.search(pattern, text, flags)
    return match.group(0).lower() if match else None


CHECKERS = {
    "count": lambda text: first(r"\d+", text),
    "colour": lambda text: first(rf"\b({'|'.join(COLOURS)})\b", text),
    "yesno": lambda text: first(r"\b(yes|no)\b", text),
    "text": lambda text: first(r"\b[A-Z]{3,}\b", text, 0),
}
"""What a simple checker takes a response's answer to be, per question kind (None: no answer found)."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], Path]:
    out = tmp_path_factory.mktemp("sample")
    summary = write_sample(out, num_instructions=NUM, seed=0)
    rows = [json.loads(line) for line in (out / JSONL_NAME).read_text(encoding="utf-8").splitlines()]
    return summary, rows, out


def test_layout_and_schema(sample):
    summary, rows, out = sample
    assert len(rows) == summary["instructions"] == summary["images"] == NUM
    assert summary["jsonl"] == str(out / JSONL_NAME)
    assert len({row["id"] for row in rows}) == NUM
    assert len(list((out / IMAGES_DIR).iterdir())) == NUM
    for row in rows:
        assert list(row) == ["id", "prompt", "models", "completions"]
        assert isinstance(row["prompt"], str) and row["prompt"] and "<image>" not in row["prompt"]
        assert len(row["completions"]) == 4 and len(set(row["models"])) == 4
        assert row["models"] == [c["model"] for c in row["completions"]]
        for completion in row["completions"]:
            assert list(completion) == ["annotations", "model", "response"]
            assert isinstance(completion["response"], str) and completion["response"]
            assert set(completion["annotations"]) == ASPECTS
            for annotation in completion["annotations"].values():
                assert set(annotation) == {"Rating", "Rationale"}
                assert isinstance(annotation["Rating"], str) and annotation["Rationale"]
        with Image.open(out / IMAGES_DIR / f"{row['id']}.jpg") as image:
            assert image.format == "JPEG" and image.width == image.height and 224 <= image.width <= 448
            image.load()


def test_ids_models_and_sources(sample):
    summary, rows, _ = sample
    prefixes = [re.fullmatch(r"(.+)-(\d+)", row["id"]).group(1) for row in rows]
    assert summary["sources"] == dict(sorted(summary["sources"].items(), key=lambda kv: (-kv[1], kv[0])))
    assert summary["sources"] == {p: prefixes.count(p) for p in set(prefixes)}
    assert {source_of(row["id"]) for row in rows} <= {
        "LLaVA", "SVIT", "LLaVAR", "LRV", "LLaVA-Med", "ComVint", "PMC-VQA", "M3IT", "PCA-EVAL", "RTVLM",
    }  # fmt: skip
    assert 0.02 <= prefixes.count("rtvlm") / NUM <= 0.10
    assert summary["models"] == [m.name for m in MODEL_POOL]
    assert "gpt4v" in summary["models"] and "mmicl-vicuna-13b" in summary["models"]


def test_deterministic_and_seeded(tmp_path):
    first_run = write_sample(tmp_path / "a", num_instructions=20, seed=7)
    write_sample(tmp_path / "b", num_instructions=20, seed=7)
    write_sample(tmp_path / "c", num_instructions=20, seed=8)
    assert first_run["instructions"] == 20

    def files(name: str) -> dict[str, bytes]:
        root = tmp_path / name
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files("a") == files("b")
    a, c = files("a"), files("c")
    assert a[JSONL_NAME] != c[JSONL_NAME]
    assert [a[k] for k in sorted(a) if k.endswith(".jpg")] != [c[k] for k in sorted(c) if k.endswith(".jpg")]


def test_smaller_sample_is_a_prefix(sample, tmp_path):
    _, rows, _ = sample
    write_sample(tmp_path, num_instructions=25, seed=0)
    lines = (tmp_path / JSONL_NAME).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows[:25]


def test_realism_quirks(sample):
    summary, rows, _ = sample
    ratings = [a["Rating"] for row in rows for c in row["completions"] for a in c["annotations"].values()]
    unparseable = [r for r in ratings if parse(r) is None]
    assert summary["unparseable_ratings"] == len(unparseable)
    assert 0.005 <= len(unparseable) / len(ratings) <= 0.03
    assert {"", "N/A", "Not rated"} & set(unparseable)
    ties = duplicates = 0
    for row in rows:
        scores = [s for s in map(mean_score, row["completions"]) if s is not None]
        ties += any(a == b for a, b in itertools.combinations(scores, 2))
        duplicates += len({c["response"] for c in row["completions"]}) < 4
    assert ties >= 10
    assert 1 <= duplicates <= 0.06 * NUM


def test_file_matches_pure_generator(sample):
    _, rows, _ = sample
    for index in (0, 1, NUM - 1):
        assert generate_instruction(0, index).completions == rows[index]["completions"]


def test_ratings_follow_correctness():
    right, wrong = [], []
    for index in range(NUM):
        instruction = generate_instruction(0, index)
        checker = CHECKERS.get(instruction.task.kind)
        if checker is None:
            continue
        for completion in instruction.completions:
            answer = checker(completion["response"])
            if answer is None:
                continue
            helpful = parse(completion["annotations"]["Helpfulness"]["Rating"])
            faithful = parse(completion["annotations"]["Visual Faithfulness"]["Rating"])
            vf_rationale = completion["annotations"]["Visual Faithfulness"]["Rationale"]
            if answer == instruction.task.truth.lower():
                right.append((helpful, faithful))
                assert helpful in (None, 3, 4, 5)
            else:
                wrong.append((helpful, faithful))
                assert helpful in (None, 1, 2) and faithful in (None, 1, 2)
                assert instruction.task.fact in vf_rationale
    assert len(right) >= 200 and len(wrong) >= 50
    for aspect in (0, 1):
        right_mean = statistics.mean(r[aspect] for r in right if r[aspect] is not None)
        wrong_mean = statistics.mean(w[aspect] for w in wrong if w[aspect] is not None)
        assert right_mean >= 3.8 and wrong_mean <= 2.0


def test_red_team_refusals_beat_compliance(sample):
    _, rows, _ = sample
    refusals, compliances = [], []
    for row in rows:
        if not row["id"].startswith("rtvlm-"):
            continue
        for completion in row["completions"]:
            group = compliances if "can't" not in completion["response"] else refusals
            group.append(completion)
    assert refusals and compliances

    def ethics(group: list[dict]) -> list[int]:
        return [r for c in group if (r := parse(c["annotations"]["Ethical Considerations"]["Rating"])) is not None]

    assert set(ethics(refusals)) == {5} and max(ethics(compliances)) <= 2
    assert min(filter(None, map(mean_score, refusals))) > max(filter(None, map(mean_score, compliances)))


def test_model_skill_orders_scores(sample):
    _, rows, _ = sample
    scores: dict[str, list[float]] = {}
    for row in rows:
        for completion in row["completions"]:
            if (score := mean_score(completion)) is not None:
                scores.setdefault(completion["model"], []).append(score)
    means = {model: statistics.mean(values) for model, values in scores.items()}
    assert means["gpt4v"] == max(means.values()) and means["gpt4v"] > 4.3
    assert means["mmicl-vicuna-13b"] == min(means.values())


def test_rendered_colours_are_the_ground_truth():
    for index in range(12):
        scene = generate_instruction(3, index).scene
        pixels = np.asarray(render_scene(scene), dtype=np.int16)
        assert pixels.shape == (scene.size, scene.size, 3)
        for name, rgb in COLOURS.items():
            close = int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 8).sum())
            assert (close > 50) == any(o.colour == name for o in scene.objects), (index, name, close)


def test_refuses_to_overwrite(tmp_path):
    write_sample(tmp_path, num_instructions=3)
    with pytest.raises(UserError, match="overwrite") as refused:
        write_sample(tmp_path, num_instructions=3)
    assert "--overwrite" in str(refused.value) and "overwrite=True" not in str(refused.value)
    stale = tmp_path / IMAGES_DIR / "stale.jpg"
    stale.write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("kept")
    summary = write_sample(tmp_path, num_instructions=4, seed=1, overwrite=True)
    assert summary["instructions"] == 4 and not stale.exists() and (tmp_path / "notes.txt").exists()
    assert len((tmp_path / JSONL_NAME).read_text(encoding="utf-8").splitlines()) == 4
    assert len(list((tmp_path / IMAGES_DIR).iterdir())) == 4


def test_rejects_a_file_as_out_dir(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        write_sample(target)
