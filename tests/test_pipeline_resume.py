"""``kill -9`` of a running ``vlfeedback annotate``, then the same command again: nothing finished is paid twice.

Run: pytest tests/test_pipeline_resume.py
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from release_factory import jpeg, row, write_release
from support.openai_server import OpenAIServer
from support.pipeline import JUDGE_KEY_ENV as KEY_ENV
from support.pipeline import annotate_args

SECRET = "sk-test-DO-NOT-LEAK-kill9"
ITEMS = 80


def finished_items(store: Path) -> dict[str, str]:
    """item id → outcome of the results committed so far (read-only, beside the running writer)."""
    if not store.is_file():
        return {}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        try:
            return dict(db.execute("SELECT item_id, outcome FROM results"))
        except sqlite3.OperationalError:  # the schema is not there yet
            return {}


def test_kill_9_mid_run_then_rerun_repeats_no_finished_item(tmp_path: Path) -> None:
    rows = [
        row(
            f"llava-{i}",
            [(1, 1, 1)] * 3,
            responses=[f"a{i}", f"b{i}", f"c{i}"],
            prompt=f"Question llava-{i}?" + (" [[malformed]]" if i % 4 == 0 else ""),
        )
        for i in range(ITEMS)
    ]
    source = write_release(tmp_path / "in", rows, images={r["id"]: jpeg(size=20 + i % 7) for i, r in enumerate(rows)})
    out = tmp_path / "out"
    store = out / "annotate" / "state.sqlite"
    env = {**os.environ, KEY_ENV: SECRET}
    with OpenAIServer(latency=0.1) as server:
        args = annotate_args(server.url, source, out, "--concurrency", "4")
        command = [sys.executable, "-m", "vlfeedback_kit.cli", *args]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(finished_items(store)) < 12:
            assert first.poll() is None, f"annotate ended before it could be killed: {first.communicate()}"
            assert time.monotonic() < deadline, "annotate made no progress"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        killed_out, killed_err = first.communicate()
        assert first.returncode == -signal.SIGKILL

        done_before = finished_items(store)
        assert 12 <= len(done_before) < ITEMS
        calls_before = {item: len(server.calls_about(f"Question {item}?")) for item in done_before}
        assert all(calls_before[item] == (2 if int(item.split("-")[1]) % 4 == 0 else 1) for item in done_before)

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        repeats = {item: len(server.calls_about(f"Question {item}?")) - n for item, n in calls_before.items()}
        assert set(repeats.values()) == {0}, repeats

    result = [json.loads(line) for line in (out / "vlfeedback.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in result) == sorted(r["id"] for r in rows)
    assert json.loads((out / "annotate" / "report.json").read_text())["ok"] == ITEMS
    assert server.tokens == {SECRET}
    for text in (killed_out, killed_err, second.stdout, second.stderr):
        assert SECRET not in text
    for path in out.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
