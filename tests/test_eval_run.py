"""`eval run --compare-base` on a tiny Qwen2-VL + a tiny trained-like adapter: both labels generated from one model
load, judged by the loopback judge, scored, reported, and turned into the model card's model-index."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from support.eval_data import write_mme, write_mmhal, write_mmvet, write_redteam, write_winrate
from support.eval_judge import EvalJudgeServer
from support.run_dirs import run_info
from support.tiny_silkie import tiny_silkie

from vlfeedback_kit.cards.model import render_model_card
from vlfeedback_kit.cli import main
from vlfeedback_kit.eval.generation import read_responses

KEY = "sk-judge-secret-xyz"


@pytest.fixture(scope="module")
def silkie(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    return tiny_silkie(root, **{k: v for k, v in run_info(adapter=True).items() if k != "base_model"})


def run_args(data: Path, out: Path, url: str, adapter: Path, benchmarks: str = "mme,mmhal,winrate") -> list[str]:
    return ["eval", "run", "--benchmark", benchmarks, "--data", f"mme={data / 'MME'}", "--data",
            f"mmhal={data / 'MMHal'}", "--data", f"winrate={data / 'held.parquet'}", "--adapter", str(adapter),
            "--compare-base", "--judge-model", "judge-x", "--judge-base-url", url, "--judge-api-key-env", "JUDGE_KEY",
            "--max-new-tokens", "6", "--batch-size", "8", "--out", str(out), "--quiet"]  # fmt: skip


def test_compare_base_report_and_model_card_round_trip(silkie, tmp_path: Path, monkeypatch):
    _, adapter = silkie
    monkeypatch.setenv("JUDGE_KEY", KEY)
    write_mme(tmp_path / "MME")
    write_mmhal(tmp_path / "MMHal")
    write_winrate(tmp_path / "held.parquet")
    out = tmp_path / "evals"
    with EvalJudgeServer(resolved={"judge-x": "judge-x-2026-01-01"}) as server:
        assert main(run_args(tmp_path, out, server.url, adapter)) == 0
        assert len(server.calls) == 8 * 2 + 3 * 2  # MMHal per label, win-rate in both orders
        summary = json.loads((out / "run.json").read_text())
        assert summary["model_loads"] == 1 and summary["generated"] == {"mme": 24, "mmhal": 16, "winrate": 6}
        assert main(run_args(tmp_path, out, server.url, adapter)) == 0  # everything on file: nothing redone
        assert len(server.calls) == 22
        assert json.loads((out / "run.json").read_text())["generated"] == {"mme": 0, "mmhal": 0, "winrate": 0}

    silkie_rows = read_responses(out / "silkie" / "mme" / "responses.jsonl")
    base_rows = read_responses(out / "base" / "mme" / "responses.jsonl")
    assert len(silkie_rows) == len(base_rows) == 12
    assert {r["adapter"] for r in silkie_rows.values()} == {str(adapter)}
    assert {r["adapter"] for r in base_rows.values()} == {None}
    assert [r["response"] for r in silkie_rows.values()] != [r["response"] for r in base_rows.values()]
    first = silkie_rows["existence/0.png#0"]
    assert first["prompt"].endswith("Please answer yes or no.") and first["generation"]["max_new_tokens"] == 6
    for label in ("silkie", "base"):
        mme_scores = json.loads((out / label / "mme" / "scores.json").read_text())
        assert set(mme_scores["subtasks"]) == {"existence", "artwork", "code_reasoning"}
        assert mme_scores["perception"] == mme_scores["subtasks"]["existence"] + mme_scores["subtasks"]["artwork"]
        assert sorted(p.name for p in (out / label / "mme" / "official").iterdir()) == [
            "artwork.txt",
            "code_reasoning.txt",
            "existence.txt",
        ]
        mmhal_scores = json.loads((out / label / "mmhal" / "scores.json").read_text())
        assert mmhal_scores["average_score"] == 4.0 and mmhal_scores["unparsed"] == 0
        assert mmhal_scores["judge_models_resolved"] == ["judge-x-2026-01-01"]
    wins = json.loads((out / "silkie" / "winrate" / "scores.json").read_text())
    assert (wins["wins"], wins["ties"], wins["losses"]) == (0, 3, 0)  # "A" in both orders flips: ties
    assert not (out / "base" / "winrate" / "scores.json").exists()
    assert main(["eval", "score", "mme", str(out / "silkie" / "mme" / "official"), "--out",
                 str(tmp_path / "rescored.json")]) == 0  # fmt: skip
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert rescored["subtasks"] == json.loads((out / "silkie" / "mme" / "scores.json").read_text())["subtasks"]

    assert main(["eval", "report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Reported in the paper (reference only, not our result" in report and "| 1539.6 |" in report
    assert {p.name for p in out.glob("*.png")} == {"mme_subtasks.png", "mmhal_per_type.png"}
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["label"] == "silkie"
    assert all(r["metric_value"] != 1539.6 for r in eval_results["results"])  # the paper's numbers are not ours

    card = render_model_card(adapter, eval_results=out / "eval_results.json")
    back = ModelCard(str(card)).data
    ours = {(r["dataset_name"], r["metric_type"]): r["metric_value"] for r in eval_results["results"]}
    assert {(e.dataset_name, e.metric_type): e.metric_value for e in back.eval_results} == ours
    index = yaml.safe_load(str(card).split("---")[1])["model-index"][0]["results"]
    mmhal_entry = next(r for r in index if r["dataset"]["name"] == "MMHal-Bench")
    assert [m["type"] for m in mmhal_entry["metrics"]] == ["mmhal_average_score", "mmhal_hallucination_rate"]
    assert len(index) == 2  # MMHal-Bench (2 metrics merged into one entry) and win-rate
    assert eval_results["skipped"][0]["benchmark"] == "mme"  # 3 of 14 subtasks: no partial total on the card
    assert "For reference only" in str(card) and "| silkie | MME | MME perception | 1539.6 |" in str(card)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == []


def test_mmvet_and_redteam_through_the_transformers_engine(silkie, tmp_path: Path, monkeypatch):
    """Both judged benchmarks end to end from one loaded model: generated for Silkie and the base, each judge call
    carrying the very response on file (and the item's image for red-teaming), scored by their own rules."""
    _, adapter = silkie
    monkeypatch.setenv("JUDGE_KEY", KEY)
    write_mmvet(tmp_path / "mm-vet")
    write_redteam(tmp_path / "RTVLM")
    out = tmp_path / "evals"
    args = ["eval", "run", "--benchmark", "mmvet,redteam", "--data", f"mmvet={tmp_path / 'mm-vet'}", "--data",
            f"redteam={tmp_path / 'RTVLM'}", "--adapter", str(adapter), "--compare-base", "--judge-model", "judge-x",
            "--judge-api-key-env", "JUDGE_KEY", "--max-new-tokens", "6", "--out", str(out), "--quiet"]  # fmt: skip
    with EvalJudgeServer() as server:
        assert main([*args, "--judge-base-url", server.url]) == 0
        calls, images = list(server.calls), list(server.images)
    summary = json.loads((out / "run.json").read_text())
    assert summary["model_loads"] == 1 and summary["generated"] == {"mmvet": 8, "redteam": 4}
    assert len(calls) == 2 * 4 + 2 * 2
    texts = [call.text for call in calls]
    for label in ("silkie", "base"):
        for benchmark, framed in (("mmvet", "| {} | "), ("redteam", "### Answer to evaluate\n{}")):
            for response in read_responses(out / label / benchmark / "responses.jsonl").values():
                # the response as the official query / the kit's rubric frames it, in one of the judge requests
                assert response["response"] and any(framed.format(response["response"]) in text for text in texts)
        mmvet_scores = json.loads((out / label / "mmvet" / "scores.json").read_text())
        assert mmvet_scores["total"] == 50.0 and mmvet_scores["unparsed"] == 0  # "0.5" for every item
        redteam_scores = json.loads((out / label / "redteam" / "scores.json").read_text())
        assert redteam_scores["scorer"].startswith("kit convention") and redteam_scores["mean_rating"] == 4.0
        assert redteam_scores["refusal_rate"] == 0.0
    redteam_calls = [n for call, n in zip(calls, images) if "red-teaming request" in call.text]
    mmvet_calls = [n for call, n in zip(calls, images) if "red-teaming request" not in call.text]
    assert redteam_calls == [1] * 4 and mmvet_calls == [0] * 8  # MM-Vet's official judge is text-only


def test_kill_during_generation_resumes(tmp_path: Path, monkeypatch):
    """--engine openai (any OpenAI-compatible server), killed mid-run: finished responses are never regenerated."""
    write_mme(tmp_path / "MME", subtasks=("existence", "count", "color"), images=4)
    monkeypatch.setenv("GEN_KEY", "sk-gen")
    out = tmp_path / "evals"
    args = ["eval", "run", "--benchmark", "mme", "--data", f"mme={tmp_path / 'MME'}", "--engine", "openai",
            "--model", "served-base", "--adapter", "served-silkie", "--compare-base", "--api-key-env", "GEN_KEY",
            "--batch-size", "4", "--out", str(out), "--quiet"]  # fmt: skip
    with EvalJudgeServer() as server:
        child = subprocess.Popen([sys.executable, "-m", "vlfeedback_kit.cli", *args, "--base-url", server.url],
                                 env={**os.environ})  # fmt: skip
        server.on_call = lambda n: n == 18 and os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=120) == -signal.SIGKILL
        server.on_call = None
        before = {label: read_responses(out / label / "mme" / "responses.jsonl") for label in ("silkie", "base")}
        assert 0 < sum(map(len, before.values())) < 48
        assert main([*args, "--base-url", server.url]) == 0
    after = {label: read_responses(out / label / "mme" / "responses.jsonl") for label in ("silkie", "base")}
    assert all(len(rows) == 24 for rows in after.values())
    assert len(server.calls) - 48 <= 4  # only the batch in flight was asked twice
    assert {r["model"] for r in after["base"].values()} == {"served-base"}
    assert {c.model for c in server.calls} == {"served-base", "served-silkie"}
    for label, rows in before.items():
        assert all(after[label][key] == row for key, row in rows.items())


def test_torn_last_line_is_dropped_and_a_corrupt_line_is_named(tmp_path: Path):
    from vlfeedback_kit.errors import UserError
    from vlfeedback_kit.eval.generation import ResponseLog

    path = tmp_path / "responses.jsonl"
    path.write_text('{"id": "a", "response": "yes"}\n{"id": "b", "response": "no"}\n{"id": "c", "resp')
    log = ResponseLog(path)
    log.write([{"id": "c", "response": "maybe"}])
    log.close()
    assert list(read_responses(path)) == ["a", "b", "c"] and path.read_text().count("\n") == 3
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(UserError, match="responses.jsonl:2: not a JSON line"):
        read_responses(path)
