"""``eval`` over several base URLs (the openai engine's and the judge's replicas) and ``eval run --shard`` merged
by ``eval assemble``.

Run: pytest tests/test_eval_replicas.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.eval_data import write_mme, write_mmvet
from support.eval_judge import EvalJudgeServer

from vlfeedback_kit.cli import main
from vlfeedback_kit.eval.generation import read_responses

KEY = "sk-eval-replicas"


@pytest.fixture
def two(monkeypatch: pytest.MonkeyPatch):
    """Two loopback replicas of one server (generation and judge), the key in its variable."""
    monkeypatch.setenv("EVAL_KEY", KEY)
    with EvalJudgeServer() as a, EvalJudgeServer() as b:
        yield a, b


def test_the_openai_engine_spreads_over_replicas_and_survives_one_dying(two, tmp_path: Path) -> None:
    a, b = two
    write_mme(tmp_path / "MME", subtasks=("existence", "count", "color"), images=4)
    out = tmp_path / "evals"
    a_url = a.url
    a.kill_after(10)
    args = ["eval", "run", "--benchmark", "mme", "--data", f"mme={tmp_path / 'MME'}", "--engine", "openai",
            "--model", "served-base", "--adapter", "served-silkie", "--compare-base", "--api-key-env", "EVAL_KEY",
            "--batch-size", "8", "--base-url", f"{a_url},{b.url}", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    rows = {label: read_responses(out / label / "mme" / "responses.jsonl") for label in ("silkie", "base")}
    assert all(len(r) == 24 for r in rows.values())
    assert a.killed and 0 < len(a.calls) <= 9 and len(a.calls) + len(b.calls) == 48  # none answered twice
    recorded = json.loads((out / "run.json").read_text())["options"]["base_url"]
    assert recorded == f"{a_url}, {b.url}"


def mmvet_args(data: Path, out: Path, gen: str, judges: list[str], *extra: str) -> list[str]:
    judge = [arg for url in judges for arg in ("--judge-base-url", url)]
    return ["eval", "run", "--benchmark", "mmvet", "--data", f"mmvet={data}", "--engine", "openai", "--model",
            "served-base", "--api-key-env", "EVAL_KEY", "--base-url", gen, "--judge-model", "judge-x",
            "--judge-api-key-env", "EVAL_KEY", *judge, "--out", str(out), "--quiet", *extra]  # fmt: skip


def test_a_judge_replica_killed_mid_run_loses_and_repays_nothing(two, tmp_path: Path) -> None:
    a, b = two
    data = write_mmvet(tmp_path / "mm-vet", n=8)
    with EvalJudgeServer() as gen:
        a.kill_after(3)
        assert main(mmvet_args(data, tmp_path / "evals", gen.url, [a.url, b.url], "--judge-concurrency", "2")) == 0
    scores = json.loads((tmp_path / "evals" / "base" / "mmvet" / "scores.json").read_text())
    assert scores["total"] == 50.0 and scores["unparsed"] == 0
    judged = [c.content_hash for c in a.calls + b.calls]
    assert len(judged) == 8 == len(set(judged)) and len(a.calls) <= 2 and a.killed


def test_eval_shards_merge_into_what_one_run_scores(two, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    judge, gen = two
    data = tmp_path / "mm-vet"
    write_mmvet(data, n=8)
    for i in range(2):
        assert main(mmvet_args(data, tmp_path / f"s{i}", gen.url, [judge.url], "--shard", f"{i}/2")) == 0
        said = capsys.readouterr().out
        assert f"eval shard {i}/2 done" in said and "vlfeedback eval assemble SHARD0 SHARD1 --out DIR" in said
    parts = [read_responses(tmp_path / f"s{i}" / "base" / "mmvet" / "responses.jsonl") for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1]) and len(parts[0]) + len(parts[1]) == 8
    calls = len(judge.calls)
    merged = tmp_path / "merged"
    assert main(["eval", "assemble", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged), "--quiet"]) == 0
    assert len(judge.calls) == calls == 8  # the merged ledgers hold every grading: no judge call
    assert main(mmvet_args(data, tmp_path / "whole", gen.url, [judge.url])) == 0
    whole = json.loads((tmp_path / "whole" / "base" / "mmvet" / "scores.json").read_text())
    assert json.loads((merged / "base" / "mmvet" / "scores.json").read_text())["total"] == whole["total"]
    summary = json.loads((merged / "run.json").read_text())
    assert summary["generated"] == {"mmvet": 8} and summary["incomplete"] == []
    assert main(["eval", "assemble", str(tmp_path / "s0"), "--out", str(tmp_path / "m2"), "--quiet"]) == 2
    assert "give each shard 0..N-1 of one run once" in capsys.readouterr().err


def test_a_replica_taken_out_stays_out_across_generation_batches(two, tmp_path: Path) -> None:
    from vlfeedback_kit.builders.pipeline.endpoint import BREAKER_LIMIT

    dead, live = two
    dead.drop_chat = True  # it answers the probe, then drops every chat call
    write_mme(tmp_path / "MME", subtasks=("existence", "count", "color"), images=4)
    args = ["eval", "run", "--benchmark", "mme", "--data", f"mme={tmp_path / 'MME'}", "--engine", "openai",
            "--model", "served-base", "--api-key-env", "EVAL_KEY", "--batch-size", "4", "--base-url",
            f"{dead.url},{live.url}", "--out", str(tmp_path / "evals"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert len(read_responses(tmp_path / "evals" / "base" / "mme" / "responses.jsonl")) == 24 == len(live.calls)
    assert dead.dropped <= BREAKER_LIMIT + 2  # 6 batches of 4: not a few drops in every batch
