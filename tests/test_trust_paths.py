"""No file name from data escapes its folder: a stage's writer, the build's sources and a stage's input never turn an
id or an image path from data into a file outside their folder (``../``, an absolute path, a symlink out).

Load-time (``load_pairs``) and adapter cases live beside their modules' tests (test_load_pairs.py,
test_pipeline_instructions.py). Run: pytest tests/test_trust_paths.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from release_factory import jpeg, row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.builders.pipeline.layout import LayoutWriter, open_input
from vlfeedback_kit.errors import UserError

GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]
SECRET = jpeg((1, 2, 3), size=24)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the working root holding one private file that decodes as an image."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.jpg").write_bytes(SECRET)
    return folder


def untouched(outside: Path) -> bool:
    return [p.name for p in outside.iterdir()] == ["secret.jpg"] and (outside / "secret.jpg").read_bytes() == SECRET


def test_a_stage_writer_refuses_an_id_that_is_a_path(tmp_path: Path, outside: Path) -> None:
    out = tmp_path / "root" / "out"
    writer = LayoutWriter(out, "responses.jsonl")
    (out / "merged_images" / "link.jpg").symlink_to(outside / "secret.jpg")
    evil = ["../../../outside/secret", str(outside / "secret"), "../" * 40 + str(outside / "x").lstrip("/"), "link"]
    for row_id in evil:
        with pytest.raises(UserError, match=r"responses.jsonl: row id .* (cannot name a file|resolves outside)"):
            writer.add({"id": row_id}, jpeg())
    writer.add({"id": "fine"}, jpeg())
    writer.close()
    assert untouched(outside)
    assert [json.loads(line)["id"] for line in (out / "responses.jsonl").read_text().splitlines()] == ["fine"]


def test_an_img_path_hint_leading_outside_the_release_is_rejected_unread(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    good = [row(f"svit-{i}", GOOD) for i in range(6)]
    hinted = {"svit-a": "../outside/secret.jpg", "svit-b": str(outside / "secret.jpg"), "svit-c": "link.jpg"}
    rows = good + [row(row_id, GOOD) | {"img_path": hint} for row_id, hint in hinted.items()]
    release = write_release(root / "release", rows, images={r["id"]: jpeg() for r in good})
    (release / "link.jpg").symlink_to(outside / "secret.jpg")
    out = root / "vlfeedback"
    report = build(BuildOptions(source=str(release), out_dir=out, progress=False, max_reject_rate=0.5))
    assert report["reasons"] == {"unsafe_path": 3}
    rejected = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejected] == [(row_id, "unsafe_path") for row_id in hinted]
    assert all(SECRET not in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert untouched(outside)
    with open_input(release) as folder:  # a pipeline stage reading the same folder: no image, nothing read
        lines = {line.row["id"]: line for line in folder.lines()}
        for row_id in hinted:
            image, problem = folder.usable(lines[row_id], None)
            assert image is None and problem[0] == "unsafe_path" and "resolves outside" in problem[1]
        assert folder.usable(lines["svit-0"], None)[0]


def test_a_parquet_image_path_that_is_not_a_file_name_is_not_kept(tmp_path: Path) -> None:
    source = tmp_path / "root" / "copy.parquet"
    source.parent.mkdir()
    record = row("svit-1", GOOD) | {"image": {"bytes": jpeg(), "path": ".."}}
    pq.write_table(pa.Table.from_pylist([record]), source)
    out = tmp_path / "root" / "vlfeedback"
    build(BuildOptions(source=str(source), out_dir=out, progress=False))
    (shard,) = (out / "data" / "raw").glob("*.parquet")
    assert pq.read_table(shard).column("image").to_pylist()[0]["path"] == "svit-1.jpg"
