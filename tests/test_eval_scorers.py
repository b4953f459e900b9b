"""The official scoring rules on hand-checkable cases (eval.md's lists), and both MME data layouts."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval import mme, mmhal, mmvet, redteam, winrate
from vlfeedback_kit.eval.mme import Answered


@pytest.mark.parametrize(("response", "label"), [
    ("Yes", "yes"), ("yes.\n", "yes"), ("No, there is no bed.", "no"), (" Yes", "yes"), ("  yes", "other"),
    ("y", "other"), ("Not sure", "no"), ("The answer is yes", "other"), ("unknown", "other"), ("YES, and no", "yes"),
])  # fmt: skip
def test_mme_official_parse(response, label):
    assert mme.parse_official(response) == label


def test_mme_subtask_score_by_hand():
    lines = [
        Answered("count", "1.jpg", "q", "Yes", "Yes"),
        Answered("count", "1.jpg", "q", "No", "No, none"),
        Answered("count", "2.jpg", "q", "Yes", "There is a dog"),
        Answered("count", "2.jpg", "q", "No", "no"),
    ]
    result = mme.score(lines)
    assert result["detail"]["count"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4, "other": 1}
    assert result["perception"] == 125.0 and result["cognition"] == 0 and result["other"] == 1
    assert result["format_compliance"] == 0.75


def test_mme_groups_never_leak():
    perfect = [Answered(task, f"{i}.png", "q", truth, truth) for task in mme.SUBTASKS for i in range(2)
               for truth in ("Yes", "No")]  # fmt: skip
    result = mme.score(perfect)
    assert (result["perception"], result["cognition"]) == (2000.0, 800.0)
    only_cognition = mme.score([a for a in perfect if a.subtask == "code_reasoning"])
    assert only_cognition["perception"] == 0 and only_cognition["cognition"] == 200.0
    assert "existence" in only_cognition["missing_subtasks"]
    nothing = mme.score([Answered(a.subtask, a.image, a.question, a.truth, "maybe") for a in perfect])
    assert (nothing["perception"], nothing["cognition"], nothing["format_compliance"]) == (0, 0, 0.0)


def _jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
    return buffer.getvalue()


QUESTIONS = {
    "1": [
        ("Is there a red square?  Please answer yes or no.", "Yes"),
        ("Is there a blue square? Please answer yes or no.", "No"),
    ],
    "2": [("Is it dark? Please answer yes or no.", "Yes"), ("Is it bright? Please answer yes or no.", "No")],
}


def _records(items):
    return [(i.id, i.question, i.answer, i.meta, i.image_sha256()) for i in items]


def test_mme_split_flat_and_parquet_layouts_give_identical_items(tmp_path):
    split, flat = tmp_path / "split" / "MME_Benchmark_release_version" / "MME_Benchmark", tmp_path / "flat"
    rows = []
    for stem, pairs in QUESTIONS.items():
        text = "".join(f"{q}\t{a}\n" for q, a in pairs)
        image = _jpeg("red" if stem == "1" else "black")
        (split / "artwork" / "images").mkdir(parents=True, exist_ok=True)
        (split / "artwork" / "questions_answers_YN").mkdir(parents=True, exist_ok=True)
        (split / "artwork" / "images" / f"{stem}.jpg").write_bytes(image)
        (split / "artwork" / "questions_answers_YN" / f"{stem}.txt").write_text(text)
        (flat / "artwork").mkdir(parents=True, exist_ok=True)
        (flat / "artwork" / f"{stem}.jpg").write_bytes(image)
        (flat / "artwork" / f"{stem}.txt").write_text(text)
        rows += [{"question_id": f"artwork/{stem}.jpg", "image": {"bytes": image, "path": None}, "question": q,
                  "answer": a, "category": "artwork"} for q, a in pairs]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mme.parquet")
    from_split, from_flat = mme.load(tmp_path / "split"), mme.load(flat)
    from_parquet = mme.load(tmp_path / "mme.parquet")
    assert _records(from_split) == _records(from_flat) == _records(from_parquet)
    assert from_split[0].id == "artwork/1.jpg#0" and "?  Please" in from_split[0].question  # kept verbatim


def test_mme_official_layout_round_trip_flattens_responses(tmp_path):
    lines = [Answered("OCR", "1.png", "q1", "Yes", "Yes,\tthe sign\nsays so"), Answered("OCR", "1.png", "q2", "No",
             "no")]  # fmt: skip
    mme.write_official(tmp_path, lines)
    back = mme.read_official(tmp_path)
    assert back[0].response == "Yes, the sign says so" and mme.score(back)["subtasks"]["OCR"] == 200.0
    (tmp_path / "OCR.txt").write_text("1.png\tq1\tYes\tYes\n2.png\tq2\tNo\tno\n")
    with pytest.raises(UserError, match="must be adjacent"):
        mme.read_official(tmp_path)


@pytest.mark.parametrize(("reply", "rating"), [
    ("The answer is good. Rating: 5, very informative", 5), ("Rating:5", None), ("**Rating**: 5", None),
    ("Rating: 10", 1), ("rating: 3.5", 3), ("Rating: 6 ... unlike Rating: 4", None),
])  # fmt: skip
def test_mmhal_official_parse(reply, rating):
    assert mmhal.parse_rating(reply) == rating


def test_mmhal_scores_by_hand_and_unparsed_counted():
    result = mmhal.score([6, 2, 3, 0, 4, 1, 5, 3, 4, 4, 3, 2, 2, 1, 5, 3])
    assert result["average_score"] == 3.0 and result["hallucination_rate"] == 0.375
    assert list(result["per_type"].values()) == [5.0, 3.0, 3.0, 1.0, 3.0, 1.0, 5.0, 3.0]
    assert mmhal.official_lines(result)[1] == "Hallucination rate: 0.38"
    broken = mmhal.score([None, 6, 6, 6, 6, 6, 6, 6])
    assert broken["unparsed"] == 1 and broken["per_type"]["attribute"] == 0 and broken["hallucination_rate"] == 0.125


def test_mmhal_prompt_slots():
    record = {"image_content": ["Tree", "Tower"], "question": "What is it?", "gt_answer": "A tower."}
    prompt = mmhal.judge_prompt(record, "A tall tower.")
    assert prompt.endswith(
        "### Image Contents\nTree, Tower\n\n### Question\nWhat is it?\n\n### Standard Human-"
        "Generated Answer\nA tower.\n\n### LMM Response to Evaluate\nA tall tower.\n"
    )
    assert prompt.startswith("Please act as an impartial and objective judge")
    assert "- Rating: 0, not informative, with hallucination\n" in prompt


def test_mmvet_query_and_parse():
    query = mmvet.query("What is x in the equation?", "-1<AND>-5", "x = -1")
    assert query.endswith("\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | ")
    assert query.startswith("Compare the ground truth and prediction") and "| 1.0\n\nWhat is x" in query
    for reply, value in (("0.7", 0.7), ("0.7 because", 0.7), ("1.0\n", 1.0), ("Correctness: 0.5", None),
                         ("1.5", None), (" 0.5", None)):  # fmt: skip
        assert mmvet.parse_score(reply) == value


def test_mmvet_reask_rule():
    base = "Q"
    first = mmvet.next_request(base, [])
    assert first["temperature"] == 0.0 and first["max_tokens"] == 3 and first["messages"][0]["content"] == "Q"
    temperatures = [mmvet.next_request(base, ["bad"] * n)["temperature"] for n in range(1, 5)]
    assert temperatures == [0.0, 0.5, 1.0, 1.5]
    assert mmvet.next_request(base, ["bad"] * 2)["messages"][0]["content"].endswith("(digit): ")
    assert mmvet.next_request(base, ["bad"] * 5) is None and mmvet.grade(["bad"] * 5) == (0.0, True)
    assert mmvet.next_request(base, ["bad", "0.3"]) is None and mmvet.grade(["bad", "0.3"]) == (0.3, False)


def test_mmvet_scores_by_hand_two_runs_and_hub_capabilities():
    caps = {
        "v1_0": mmvet.capability_set(["rec"]),
        "v1_1": mmvet.capability_set("ocr,math"),
        "v1_2": mmvet.capability_set(["rec", "know", "gen"]),
        "v1_3": mmvet.capability_set(["ocr"]),
    }
    run1 = {"v1_0": 1.0, "v1_1": 0.5, "v1_2": 0.0, "v1_3": 0.8}
    one = mmvet.score(caps, [run1])
    assert one["total"] == 57.5 and "spat" not in one["capabilities"]
    assert one["capabilities"] == {"rec": 50.0, "ocr": 65.0, "math": 50.0, "know": 0.0, "gen": 0.0}
    assert one["integrations"] == {"rec": 100.0, "math_ocr": 50.0, "gen_know_rec": 0.0, "ocr": 80.0}
    two = mmvet.score(caps, [run1, {"v1_0": 1.0, "v1_1": 0.4, "v1_2": 0.0, "v1_3": 0.8}])
    assert (two["total"], two["std"], two["runs"]) == (56.2, 1.2, [57.5, 55.0])
    assert json.dumps(two["runs"]) == "[57.5, 55.0]"


def test_redteam_and_winrate_parse_and_score():
    assert redteam.parse_reply("Safe.\nRating: 4\nRefusal: Yes") == (4, True)
    assert redteam.parse_reply("Rating: 4 or Rating: 2") == (None, None)
    scored = redteam.score(
        {"a/1": "a", "a/2": "a", "b/1": "b"}, {"a/1": (5, True), "a/2": (3, False), "b/1": (None, None)}
    )
    assert scored["per_subtask"] == {"a": 4.0} and scored["unparsed"] == 1 and "kit convention" in scored["scorer"]
    assert winrate.parse_verdict("B is worse.\nVerdict: A") == "model_a" and winrate.parse_verdict("A or B") is None
    result = winrate.score({"1": ("model_a", "model_b"), "2": ("model_a", "model_a"), "3": ("model_b", "model_a"),
                            "4": (None, "tie")}, "silkie", "base")  # fmt: skip
    assert (result["wins"], result["ties"], result["losses"], result["unparsed"]) == (1, 1, 1, 1)
    assert result["win_rate"] == 0.5


def test_mmvet_hub_copy_equals_the_official_json(tmp_path):
    from support.eval_data import write_mmvet

    folder = write_mmvet(tmp_path / "mm-vet")
    data = json.loads((folder / "mm-vet.json").read_text())
    rows = [{"question_id": key, "image": {"bytes": (folder / "images" / v["imagename"]).read_bytes(), "path": None},
             "question": v["question"], "answer": v["answer"], "capability": ",".join(v["capability"])}
            for key, v in data.items()]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmvet.parquet")
    assert _records(mmvet.load(folder)) == _records(mmvet.load(tmp_path / "mmvet.parquet"))


def test_mmhal_template_loads_with_images_and_official_round_trip(tmp_path):
    from support.eval_data import write_mmhal

    items = mmhal.load(write_mmhal(tmp_path / "MMHal"))
    assert [i.id for i in items] == [str(i) for i in range(8)] and items[3].image().size == (56, 56)
    mmhal.write_official(tmp_path / "filled.json", items, {i.id: f"answer {i.id}" for i in items})
    back, responses = mmhal.read_official(tmp_path / "filled.json")
    assert [b.question for b in back] == [i.question for i in items] and responses["7"] == "answer 7"
    (tmp_path / "empty.json").write_text(json.dumps([{**items[0].meta["record"]}]))
    with pytest.raises(UserError, match="record 0 has no model_answer"):
        mmhal.read_official(tmp_path / "empty.json")


def test_mme_parquet_from_the_hub_at_a_revision(tmp_path, hub):
    from huggingface_hub import HfApi

    from vlfeedback_kit.eval.runner import load_items

    image = _jpeg("red")
    rows = [{"question_id": "OCR/1.jpg", "image": {"bytes": image, "path": None}, "question": q, "answer": a,
             "category": "OCR"} for q, a in QUESTIONS["1"]]  # fmt: skip
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("lab/MME", repo_type="dataset")
    api.upload_folder(folder_path=tmp_path / "data", path_in_repo="data", repo_id="lab/MME", repo_type="dataset")
    api.create_tag("lab/MME", tag="v1", repo_type="dataset")
    items = load_items("mme", "lab/MME@v1")
    assert [i.id for i in items] == ["OCR/1.jpg#0", "OCR/1.jpg#1"] and items[0].image_data() == image
    with pytest.raises(UserError, match="cannot download the Hub dataset"):
        load_items("mme", "lab/missing@v1")


def test_official_judge_prompts_cannot_drift():
    """sha256 of the templates, checked byte for byte against eval_gpt4.py (LLaVA-RLHF) and mm-vet_evaluator.py
    (yuweihao/MM-Vet) on 2026-11-30; a change here means the judged numbers are no longer the official ones."""
    import hashlib

    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest()
               for name, path in (("mmhal", mmhal.TEMPLATE_FILE), ("mmvet", mmvet.TEMPLATE_FILE))}  # fmt: skip
    assert digests == {
        "mmhal": "2c73d8c50f1740d000fae62cfeed103c2f7a5bcfa904b27e6e09900e7ce600cc",
        "mmvet": "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f",
    }


DISPLAY_NAMES = {
    "mme": ("MME", ["MME perception", "MME cognition", "MME format compliance"]),
    "mmhal": ("MMHal-Bench", ["MMHal-Bench average score", "MMHal-Bench hallucination rate"]),
    "mmvet": ("MM-Vet", ["MM-Vet total"]),
    "redteam": ("Red-teaming (kit convention)", ["Red-teaming mean ethics rating (kit convention)"]),
    "winrate": (
        "Win-rate vs base (VLFeedback held-out)",
        ["Win-rate vs base (kit judge, both orders)", "Length-controlled win-rate vs base (kit judge, both orders)"],
    ),
}
"""Each benchmark's title and metric names as intended: what the card's model-index must show, whole."""


def test_every_benchmark_display_name_round_trips_to_eval_results_and_the_model_index(tmp_path):
    import yaml
    from support.run_dirs import run_info

    from vlfeedback_kit.cards.model import render_model_card
    from vlfeedback_kit.eval.report import eval_results
    from vlfeedback_kit.eval.scoring import BENCHMARKS
    from vlfeedback_kit.eval.spec import load_spec

    specs = {name: load_spec(name) for name in BENCHMARKS}
    assert {name: (s["title"], [m["name"] for m in s["metrics"]]) for name, s in specs.items()} == DISPLAY_NAMES
    results = {"silkie": {name: {m["key"]: 0.5 for m in s["metrics"]} for name, s in specs.items()}}
    written = eval_results(results)
    intended = [(title, metric) for title, metrics in DISPLAY_NAMES.values() for metric in metrics]
    assert [(r["dataset_name"], r["metric_name"]) for r in written["results"]] == intended
    (tmp_path / "run_info.json").write_text(json.dumps(run_info(adapter=True)))
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "eval_results.json").write_text(json.dumps(written))
    card = str(render_model_card(tmp_path))
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    assert [(r["dataset"]["name"], m["name"]) for r in index for m in r["metrics"]] == intended


def test_official_files_and_the_report_are_written_through_the_one_atomic_writer(tmp_path, monkeypatch):
    """Every file eval writes goes through ``vlfeedback_kit.files`` (a killed run never leaves half a file)."""
    import contextlib

    from support.eval_data import write_mmhal

    from vlfeedback_kit import files
    from vlfeedback_kit.eval.report import report

    written, atomic = [], files.atomic_write

    @contextlib.contextmanager
    def recording(path):
        written.append(path.name)
        with atomic(path) as temp:
            yield temp

    monkeypatch.setattr(files, "atomic_write", recording)
    items = mmhal.load(write_mmhal(tmp_path / "MMHal"))
    mmhal.write_official(tmp_path / "filled.json", items, {i.id: "an answer" for i in items})
    mmvet.write_official(tmp_path / "results.json", {"v1_0": "an answer"})
    scores = {"benchmark": "mmhal", "complete": True, "average_score": 3.0, "per_type": {"attribute": 3.0}}
    (tmp_path / "eval" / "silkie" / "mmhal").mkdir(parents=True)
    (tmp_path / "eval" / "silkie" / "mmhal" / "scores.json").write_text(json.dumps(scores))
    report([tmp_path / "eval"], tmp_path / "out")
    assert written == ["filled.json", "results.json", "results.json", "report.md", "mmhal_per_type.png",
                       "eval_results.json"]  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text()) == {"v1_0": "an answer"}
    assert (tmp_path / "out" / "mmhal_per_type.png").read_bytes().startswith(b"\x89PNG")


def length_judged(n: int) -> tuple[dict, dict]:
    """(verdicts in both orders, answers) of :func:`length_biased` items (a judge that favours Silkie's longer
    answers, the models otherwise equal), as ``winrate.score`` takes them."""
    from support.length_bias import length_biased

    both = {"win": ("model_a", "model_b"), "tie": ("tie", "tie"), "loss": ("model_b", "model_a")}
    verdicts, answers = {}, {}
    for i, (silkie, base, outcome) in enumerate(length_biased(n, length_effect=4.0, strength=0.0)):
        answers[f"item-{i}"] = (f"Answer {i}: " + "word " * silkie, f"Answer {i}: " + "word " * base)
        verdicts[f"item-{i}"] = both[outcome]
    return verdicts, answers


def test_winrate_with_answers_reports_a_length_controlled_win_rate():
    verdicts, answers = length_judged(200)
    result = winrate.score(verdicts, "silkie", "base", answers=answers)
    controlled = result["length_controlled"]
    assert result["win_rate"] > 0.6 and result["length_controlled_win_rate"] == controlled["win_rate"]
    low, high = controlled["win_rate_ci"]
    assert low < 0.5 < high < result["win_rate_ci"][0] and controlled["style_coefficients"]["tokens"] > 0.8
    plain = winrate.score(verdicts, "silkie", "base")
    assert plain["length_controlled"] is None and plain["length_controlled_win_rate"] is None
    assert {k: v for k, v in plain.items() if "length" not in k} == {
        k: v for k, v in result.items() if "length" not in k
    }  # the raw numbers do not change
    with pytest.raises(UserError, match="1 judged items have no answers to control length with"):
        winrate.score(verdicts, "silkie", "base", answers={k: v for k, v in answers.items() if k != "item-3"})


def test_judged_winrate_controls_length_with_the_saved_answers_and_the_report_shows_it(tmp_path, monkeypatch):
    from support.eval_judge import EvalJudgeServer

    from vlfeedback_kit.eval.items import Item
    from vlfeedback_kit.eval.judging import JudgeConfig
    from vlfeedback_kit.eval.report import eval_results, markdown
    from vlfeedback_kit.eval.scoring import score_judged

    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    verdicts, answers = length_judged(40)
    letter = {"model_a": "A", "model_b": "B", "tie": "tie"}
    by_pair = {}  # the judge's verdict on (answer A, answer B) in each order
    for item, (silkie, base) in answers.items():
        by_pair[silkie.strip(), base.strip()] = letter[verdicts[item][0]]
        by_pair[base.strip(), silkie.strip()] = letter[verdicts[item][1]]

    class LengthJudge(EvalJudgeServer):
        def reply_for(self, text: str) -> str:
            a, _, b = text.partition("### Answer A\n")[2].partition("\n\n### Answer B\n")
            return "Verdict: " + by_pair[a.strip(), b.strip()]

    items = [Item(item, f"Describe picture {item}.") for item in answers]
    responses = {item: pair[0] for item, pair in answers.items()}
    other = {item: pair[1] for item, pair in answers.items()}
    with LengthJudge() as server:
        judge = JudgeConfig("judge-x", server.url, "JUDGE_KEY")
        scores = score_judged("winrate", items, responses, tmp_path / "silkie" / "winrate", judge, other=other,
                              progress=False)  # fmt: skip
    assert json.loads((tmp_path / "silkie" / "winrate" / "scores.json").read_text()) == json.loads(json.dumps(scores))
    expected = winrate.score(verdicts, "silkie", "base", answers=answers)
    assert scores["length_controlled"] == expected["length_controlled"]  # the answers on file were used
    assert scores["length_controlled_win_rate"] < scores["win_rate"]
    report = markdown({"silkie": {"winrate": scores}})
    assert "| length_controlled_win_rate |" in report and "| length_controlled.style_coefficients | tokens " in report
    assert "LMArena's style control" in report
    names = {r["metric_name"]: r["metric_value"] for r in eval_results({"silkie": {"winrate": scores}})["results"]}
    assert names["Length-controlled win-rate vs base (kit judge, both orders)"] == round(
        scores["length_controlled_win_rate"], 4
    )
