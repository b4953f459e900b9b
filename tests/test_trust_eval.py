"""Evaluation never reports a dead judge as a success, and its cost cap holds with calls in flight.

A closed judge port or a missing key stops ``eval score`` / ``eval run`` before any work (exit 2, one line naming
the host and the cause; nothing generated); a judge that dies mid-run leaves the benchmark incomplete and the
command exits 3 naming it and how many items were judged; ``--max-cost`` reserves each call's estimate, so 16 in
flight cannot pass it; a judge without a price has an unknown cost, never ``0.0``.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from support.eval_data import write_mmhal
from support.eval_judge import EvalJudgeServer

from vlfeedback_kit.cli import main
from vlfeedback_kit.eval import generation

KEY = "sk-judge-trust"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    monkeypatch.setenv("GEN_KEY", "sk-gen")


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of ``generation.generate`` (the runner's only way to the model)."""
    counted: list[int] = []
    real = generation.generate

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    return counted


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def filled_mmhal(path: Path, n: int) -> Path:
    """A filled MMHal-Bench template (``eval score mmhal``'s official input) of ``n`` alike records."""
    records = [{"question_type": "attribute", "question_topic": "shapes", "image_id": f"img{i}",
                "image_src": f"http://x/{i}.png", "image_content": ["Square"], "question": "What colour is it?",
                "gt_answer": "Red.", "model_answer": "It is red."} for i in range(n)]  # fmt: skip
    path.write_text(json.dumps(records))
    return path


def score_mmhal(template: Path, url: str, out: Path, *extra: str) -> int:
    return main(["eval", "score", "mmhal", str(template), "--judge-model", "judge-x", "--judge-base-url", url,
                 "--judge-api-key-env", "JUDGE_KEY", "--out", str(out), "--quiet", *extra])  # fmt: skip


def run_args(data: Path, generator: str, judge: str, out: Path) -> list[str]:
    """``eval run`` of MMHal-Bench, Silkie and its base served by ``generator`` (the openai engine: no model)."""
    return ["eval", "run", "--benchmark", "mmhal", "--data", f"mmhal={data}", "--engine", "openai", "--model",
            "served-base", "--adapter", "served-silkie", "--compare-base", "--base-url", generator, "--api-key-env",
            "GEN_KEY", "--judge-model", "judge-x", "--judge-base-url", judge, "--judge-api-key-env", "JUDGE_KEY",
            "--out", str(out), "--quiet"]  # fmt: skip


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_closed_judge_port_fails_before_any_generation(tmp_path: Path, keys, generations, capsys):
    port = closed_port()
    with EvalJudgeServer() as generator:
        code = main(run_args(write_mmhal(tmp_path / "MMHal"), generator.url, f"http://127.0.0.1:{port}/v1",
                             tmp_path / "evals"))  # fmt: skip
        assert generator.calls == []
    assert code == 2 and generations == []
    line = one_line(capsys.readouterr().err)
    assert f"cannot reach 127.0.0.1:{port}: connection refused" in line and "--judge-base-url" in line

    code = score_mmhal(filled_mmhal(tmp_path / "filled.json", 4), f"http://127.0.0.1:{port}/v1", tmp_path / "s.json")
    line = one_line(capsys.readouterr().err)
    assert code == 2 and f"127.0.0.1:{port}: connection refused" in line and not (tmp_path / "s.json").exists()


def test_a_missing_judge_key_fails_before_any_generation(tmp_path: Path, keys, generations, monkeypatch, capsys):
    monkeypatch.delenv("JUDGE_KEY")
    with EvalJudgeServer() as generator, EvalJudgeServer() as judge:
        code = main(run_args(write_mmhal(tmp_path / "MMHal"), generator.url, judge.url, tmp_path / "evals"))
        assert generator.calls == [] and judge.calls == [] and generations == []
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "JUDGE_KEY is not set" in line and "--judge-api-key-env" in line


def test_a_judge_that_dies_mid_score_leaves_the_benchmark_incomplete(tmp_path: Path, keys, capsys):
    template, out = filled_mmhal(tmp_path / "filled.json", 24), tmp_path / "mmhal.json"
    with EvalJudgeServer() as judge:
        judge.on_call = lambda n: n == 6 and setattr(judge, "drop_chat", True)  # the judge goes away
        assert score_mmhal(template, judge.url, out, "--judge-concurrency", "8") == 3
        line = one_line(capsys.readouterr().err)
        match = re.search(r"mmhal: (\d+) of 24 items judged; the judge stopped: cannot reach (\S+): (.*)", line)
        assert match and 6 <= int(match[1]) <= len(judge.calls) < 24, line
        assert match[2] == judge.url.split("//")[1].split("/")[0] and "without a reply" in match[3]
        result = json.loads(out.read_text())
        assert (
            result["complete"] is False and result["items_judged"] == int(match[1]) and "average_score" not in result
        )

        judge.on_call, judge.drop_chat = None, False  # back: the same command finishes the rest
        assert score_mmhal(template, judge.url, out) == 0
    assert json.loads(out.read_text())["complete"] is True


def test_a_judge_that_dies_mid_run_stops_the_run_incomplete(tmp_path: Path, keys, capsys):
    data, out = write_mmhal(tmp_path / "MMHal"), tmp_path / "evals"
    with EvalJudgeServer() as generator, EvalJudgeServer() as judge:
        judge.on_call = lambda n: n == 3 and setattr(judge, "drop_chat", True)
        assert main(run_args(data, generator.url, judge.url, out)) == 3
        assert len(generator.calls) == 16  # every response was generated (and is kept) before judging
    line = one_line(capsys.readouterr().err)
    assert re.search(r"mmhal \(silkie\): [3-8] of 8 items judged; the judge stopped: cannot reach 127\.0\.0\.1", line)
    summary = json.loads((out / "run.json").read_text())
    assert summary["incomplete"] == [line.removeprefix("vlfeedback eval: incomplete: ")]
    assert not (out / "base" / "mmhal" / "scores.json").exists()  # the next label is not sent to a dead judge


def test_max_cost_holds_with_16_calls_in_flight(tmp_path: Path, keys, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  judge-x: {input: 2.0, output: 0.0}\n")
    with EvalJudgeServer(latency=0.05) as judge:
        assert score_mmhal(filled_mmhal(tmp_path / "one.json", 1), judge.url, tmp_path / "one-scores.json") == 0
        one_call = judge.calls[0].prompt_tokens * 2.0 / 1e6  # the records are alike: every call costs this
        cap = 10 * one_call
        code = score_mmhal(filled_mmhal(tmp_path / "filled.json", 40), judge.url, tmp_path / "s.json",
                           "--judge-concurrency", "16", "--max-cost", repr(cap), "--prices", str(prices))  # fmt: skip
        calls = judge.calls[1:]
    spent = sum(call.prompt_tokens for call in calls) * 2.0 / 1e6
    assert code == 3 and 5 <= len(calls) <= 10 and spent <= cap * (1 + 1e-9)
    assert f"--max-cost {cap!r} reached: raise --max-cost" in capsys.readouterr().err
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["judge_run"]["calls"] == len(calls) and result["judge_run"]["cost_usd"] == pytest.approx(spent)


def test_max_cost_is_one_budget_for_the_whole_run(tmp_path: Path, keys, capsys):
    """Both labels' judging draw on one --max-cost (each label's cache used to get a budget of its own)."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  judge-x: {input: 1.0, output: 0.0}\n")
    data, out = write_mmhal(tmp_path / "MMHal"), tmp_path / "evals"
    with EvalJudgeServer() as generator, EvalJudgeServer() as judge:
        per_call = 1700 / 1e6  # an MMHal-Bench judge prompt here is ~1,680 tokens
        cap = 10 * per_call
        args = [*run_args(data, generator.url, judge.url, out), "--max-cost", repr(cap), "--prices", str(prices)]
        assert main(args) == 3
        calls = list(judge.calls)
    spent = sum(call.prompt_tokens for call in calls) / 1e6
    assert 8 <= len(calls) <= 10 and spent <= cap  # Silkie's 8, then what is left for the base
    line = one_line(capsys.readouterr().err)
    assert re.search(r"mmhal \(base\): [0-2] of 8 items judged; --max-cost \S+ reached: raise --max-cost", line)


def test_a_judge_without_a_price_has_an_unknown_cost(tmp_path: Path, keys):
    template = filled_mmhal(tmp_path / "filled.json", 2)
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  judge-x: {input: 1.0, output: 1.0}\n")
    with EvalJudgeServer() as judge:
        assert score_mmhal(template, judge.url, tmp_path / "unpriced.json") == 0
        assert score_mmhal(template, judge.url, tmp_path / "priced.json", "--prices", str(prices)) == 0
    unpriced = json.loads((tmp_path / "unpriced.json").read_text())["judge_run"]
    assert unpriced["calls"] == 2 and unpriced["cost_usd"] is None
    assert "no price for 'judge-x'" in unpriced["cost_unknown"] and "--prices" in unpriced["cost_unknown"]
    priced = json.loads((tmp_path / "priced.json").read_text())["judge_run"]
    assert priced["calls"] == 2 and priced["cost_usd"] > 0 and "cost_unknown" not in priced
