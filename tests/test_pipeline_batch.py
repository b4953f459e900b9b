"""``annotate --batch``: the Batch API round trip, re-asks in a second round, and resuming by batch id.

Run: pytest tests/test_pipeline_batch.py
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from release_factory import jpeg, row, write_release
from support.openai_server import OpenAIServer
from support.pipeline import JUDGE_KEY_ENV as KEY_ENV
from support.pipeline import annotate_args

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.cli import main as cli_main

RATINGS = {f"svit-{i}": [(i % 5 + 1, 4, 5), (2, (i + 1) % 5 + 1, 3)] for i in range(6)}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-batch")
    with OpenAIServer(batch_polls=1) as running:
        yield running


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Six instructions; svit-0 gets a malformed first reply, svit-1 a 500 inside the batch."""
    directives = {"svit-0": " [[malformed]]", "svit-1": " [[status:500]]"}
    rows = [
        row(
            item,
            [(1, 1, 1)] * 2,
            prompt=f"Question {item}?{directives.get(item, '')}",
            responses=[f"answer {k} [[rate={h},{v},{e}]]" for k, (h, v, e) in enumerate(ratings)],
        )
        for item, ratings in RATINGS.items()
    ]
    return write_release(tmp_path / "in", rows, images={r["id"]: jpeg(size=20 + n) for n, r in enumerate(rows)})


def annotate(server: OpenAIServer, source: Path, out: Path, *extra: str) -> int:
    return cli_main(
        annotate_args(server.url, source, out, "--batch", "--poll-interval", "0.01", "--shuffle", "--quiet", *extra)
    )


def check_output(out: Path) -> dict:
    rows = {r["id"]: r for r in map(json.loads, (out / "vlfeedback.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted(RATINGS)
    for item, row_ in rows.items():
        got = [tuple(int(c["annotations"][a]["Rating"]) for a in ASPECTS) for c in row_["completions"]]
        assert got == RATINGS[item]
    return json.loads((out / "annotate" / "report.json").read_text())


def test_batch_round_trip_with_a_reask_round_and_batch_prices(server: OpenAIServer, source: Path, tmp_path) -> None:
    assert annotate(server, source, tmp_path / "out") == 0
    report = check_output(tmp_path / "out")
    assert len(server.batches) == 2  # round 2: the re-ask of svit-0 and the retry of svit-1's 500
    assert len(report["run"]["batches"]) == 2 and all(c.via == "batch" for c in server.calls)
    prompt, completion = server.usage_totals()
    assert report["ledger"]["cost_usd"] == pytest.approx((prompt * 2.5 + completion * 10.0) / 1e6 * 0.5, abs=1e-9)
    assert report["ledger"]["calls"] == 7
    assert not list((tmp_path / "out" / "annotate" / "batches").iterdir())


def test_no_wait_then_rerun_resumes_the_submitted_batch(server: OpenAIServer, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert annotate(server, source, out, "--no-wait") == 3
    assert len(server.batches) == 1 and server.calls == []
    report = json.loads((out / "annotate" / "report.json").read_text())
    assert report["pending"] == 6 and "re-run the same command" in report["run"]["stopped"]

    # a crash between recording the upload and recording the batch id: the batch is found by its input file
    with sqlite3.connect(out / "annotate" / "state.sqlite") as db:
        db.execute("UPDATE batches SET batch_id = NULL, status = 'uploaded'")
    assert annotate(server, source, out) == 0
    check_output(out)
    assert len(server.batches) == 2 and sum(c.status == 200 for c in server.calls) == 7


def test_a_fresh_store_adopts_a_batch_by_id(server: OpenAIServer, source: Path, tmp_path: Path) -> None:
    assert annotate(server, source, tmp_path / "lost", "--no-wait") == 3
    (batch_id,) = server.batches
    assert annotate(server, source, tmp_path / "out", "--batch-id", batch_id) == 0
    check_output(tmp_path / "out")
    assert len(server.batches) == 2 and sum(c.status == 200 for c in server.calls) == 7


def test_batch_files_are_split_by_request_count_and_bytes() -> None:
    from vlfeedback_kit.builders.pipeline.batch import chunks, custom_id, parse_custom_id

    lines = [(custom_id(f"k{i}", 1), b"x" * size) for i, size in enumerate([40, 40, 40, 10, 90, 5])]
    assert [len(group) for group in chunks(lines, max_requests=10, max_bytes=100)] == [2, 2, 2]
    assert [len(group) for group in chunks(lines, max_requests=2, max_bytes=1000)] == [2, 2, 2]
    assert [len(group) for group in chunks(lines, max_requests=5, max_bytes=1000)] == [5, 1]
    assert parse_custom_id(custom_id("ab:cd", 3)) == ("ab:cd", 3)


def test_the_batch_client_comes_from_the_endpoint_factory_with_the_run_settings(
    server: OpenAIServer, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client set-up: the Batch API's sync client and the calls' async client share their settings code."""
    from vlfeedback_kit.builders.pipeline import batch, endpoint

    made = []

    def recording(*args):
        made.append(endpoint.make_sync_client(*args))
        return made[-1]

    monkeypatch.setattr(batch, "make_sync_client", recording)
    assert annotate(server, source, tmp_path / "out", "--timeout", "33", "--max-retries", "2") == 0
    check_output(tmp_path / "out")
    sync, calls = made[0], endpoint.make_client(server.url, "sk-test-batch", 33.0)
    assert (str(sync.base_url), sync.api_key, sync.timeout) == (str(calls.base_url), calls.api_key, calls.timeout)
    assert (str(sync.base_url), sync.timeout, sync.max_retries, calls.max_retries) == (f"{server.url}/", 33.0, 2, 0)
