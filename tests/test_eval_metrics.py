"""The scorers as local `evaluate` metric modules: loaded offline by path, equal to the plain scorers."""

from pathlib import Path

import pytest

from vlfeedback_kit.eval import mme, mmhal, mmvet
from vlfeedback_kit.eval.mme import Answered

METRICS = Path(mme.__file__).parent / "metrics"


@pytest.fixture
def evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import evaluate

    return evaluate


def test_mme_metric_equals_the_plain_scorer(evaluate):
    predictions, references = ["Yes", "No, none", "There is a dog", "no"], ["Yes", "No", "Yes", "No"]
    images = ["1.jpg", "1.jpg", "2.jpg", "2.jpg"]
    metric = evaluate.load(str(METRICS / "mme_score"))
    single = metric.compute(predictions=predictions, references=references, image_ids=images)
    assert {k: single[k] for k in ("acc", "acc_plus", "score")} == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    subtasks = ["count", "count", "code_reasoning", "code_reasoning"]
    full = metric.compute(predictions=predictions, references=references, image_ids=images, subtasks=subtasks)
    assert full == mme.score([Answered(s, i, "", r, p) for p, r, i, s in zip(predictions, references, images,
                                                                                 subtasks)])  # fmt: skip


def test_mmhal_and_mmvet_metrics_equal_the_plain_scorers(evaluate):
    replies = ["Rating: 6", "Rating:5", "Rating: 10", "rating: 3.5", "Rating: 2", "Rating: 4", "x", "Rating: 0"]
    got = evaluate.load(str(METRICS / "mmhal_score" / "mmhal_score.py")).compute(predictions=replies)
    assert got == mmhal.score([mmhal.parse_rating(r) for r in replies]) and got["unparsed"] == 2
    ids, caps = ["v1_0", "v1_1", "v1_2", "v1_3"] * 2, ["rec", "ocr,math", "rec,know,gen", "ocr"] * 2
    grades, runs = [1.0, 0.5, 0.0, 0.8, 1.0, 0.4, 0.0, 0.8], [0] * 4 + [1] * 4
    got = evaluate.load(str(METRICS / "mmvet_score")).compute(predictions=grades, ids=ids, capabilities=caps,
                                                                 runs=runs)  # fmt: skip
    plain = mmvet.score(
        {i: mmvet.capability_set(c) for i, c in zip(ids, caps)},
        [dict(zip(ids[:4], grades[:4])), dict(zip(ids[4:], grades[4:]))],
    )
    assert got == plain and (got["total"], got["std"]) == (56.2, 1.2)
