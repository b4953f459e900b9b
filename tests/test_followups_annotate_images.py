"""``annotate`` never sends the judge an image that does not decode in full: a truncated JPEG, an empty file or a
non-image is an ``unreadable_image`` invalid row with its cause, and every row read is accounted for.

Run: pytest tests/test_followups_annotate_images.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_factory import jpeg, row, write_release
from support.openai_server import OpenAIServer
from support.pipeline import JUDGE_KEY_ENV, annotate_args

from vlfeedback_kit.builders.pipeline.layout import open_input
from vlfeedback_kit.cli import main as cli_main

BROKEN = {
    "llava-1": (jpeg(size=64)[:-400], "image file is truncated"),
    "llava-2": (b"", "empty image file"),
    "llava-3": (b"<html>404</html>", "not a recognised image format"),
}


def release(folder: Path) -> Path:
    """Five rows with a unique prompt each; three of their images are broken as in ``BROKEN``."""
    ids = [f"llava-{n}" for n in range(5)]
    rows = [row(i, [(1, 1, 1)] * 2, prompt=f"Question about {i}?") for i in ids]
    images = {i: BROKEN[i][0] if i in BROKEN else jpeg((30 * n, 90, 160), size=24 + n) for n, i in enumerate(ids)}
    return write_release(folder, rows, images=images)


def test_a_stage_input_decodes_every_image_and_names_the_cause(tmp_path: Path) -> None:
    with open_input(release(tmp_path / "in")) as folder:
        usable = {line.row["id"]: folder.usable(line, None) for line in folder.lines()}
    for row_id, (_, cause) in BROKEN.items():
        image, (reason, detail) = usable[row_id]
        assert image is None and reason == "unreadable_image"
        assert detail.startswith(f"merged_images/{row_id}.jpg: ") and cause in detail
    assert all(usable[i][0] and usable[i][1] is None for i in ("llava-0", "llava-4"))


def test_annotate_sends_no_broken_image_to_the_judge_and_accounts_for_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test-followups")
    out = tmp_path / "out"
    with OpenAIServer(latency=0.0) as server:
        args = annotate_args(server.url, release(tmp_path / "in"), out, "--quiet", "--max-fail-rate", "0.9")
        assert cli_main(args) == 0
        for row_id in BROKEN:
            assert server.calls_about(f"Question about {row_id}?") == []  # the judge never received it
        assert {c.status for c in server.calls} == {200} and len(server.counts_by_hash()) == 2

    kept = [json.loads(line)["id"] for line in (out / "vlfeedback.jsonl").read_text().splitlines()]
    assert kept == ["llava-0", "llava-4"]
    assert sorted(p.name for p in (out / "merged_images").iterdir()) == ["llava-0.jpg", "llava-4.jpg"]
    failures = [json.loads(line) for line in (out / "annotate" / "failures.jsonl").read_text().splitlines()]
    assert {f["id"]: (f["outcome"], f["reason"]) for f in failures} == dict.fromkeys(
        BROKEN, ("invalid", "unreadable_image")
    )
    for failure in failures:
        assert BROKEN[failure["id"]][1] in failure["detail"]
    report = json.loads((out / "annotate" / "report.json").read_text())
    assert (report["rows"], report["ok"], report["invalid"]) == (5, 2, 3)
    assert report["rows"] == len(kept) + len(failures)  # read = kept + rejected
    assert report["failed"] == report["refused"] == report["pending"] == 0 and report["complete"]
