"""Nothing is deleted that the user or another stage made: a rebuild keeps the reference cache and the user's files,
a failed rebuild keeps the previous build, a stage's writer removes only images its own earlier run wrote.

Run: pytest tests/test_trust_deletes.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from release_factory import jpeg, row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.builders.pairing import PRESETS
from vlfeedback_kit.builders.pipeline.layout import LayoutWriter
from vlfeedback_kit.cards.dataset import write_dataset_card
from vlfeedback_kit.errors import UserError

GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


def build_into(out: Path, source: Path, **kwargs) -> dict:
    return build(BuildOptions(source=str(source), out_dir=out, progress=False, card=write_dataset_card, **kwargs))


def test_a_rebuild_keeps_the_reference_cache_and_the_users_files(tmp_path: Path) -> None:
    release = write_release(tmp_path / "rel", [row(f"svit-{i}", GOOD) for i in range(4)])
    out = tmp_path / "vlfeedback"
    build_into(out, release, policies={"best-vs-worst": PRESETS["best-vs-worst"]})
    (out / ".ref_logps").mkdir()
    (out / ".ref_logps" / "0123.parquet").write_bytes(b"hours of GPU time")
    (out / "NOTES.md").write_text("mine")
    build_into(out, release, overwrite=True)
    assert (out / ".ref_logps" / "0123.parquet").read_bytes() == b"hours of GPU time"
    assert (out / "NOTES.md").read_text() == "mine"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["pairs", "raw"]  # the build's own: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel", "vlfeedback"]  # no staging or old copy left


def test_a_failed_rebuild_keeps_the_previous_build_loadable_and_reports_beside_it(tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "vlfeedback"
    good = write_release(tmp_path / "good", [row(f"svit-{i}", GOOD) for i in range(4)])
    build_into(out, good)
    bad = write_release(tmp_path / "bad", [row(f"svit-{i}", GOOD) for i in range(4)], images={"svit-0": jpeg()})
    failed = tmp_path / "vlfeedback.failed"
    with pytest.raises(UserError) as stopped:
        build_into(out, bad, overwrite=True)
    message = str(stopped.value)
    assert f"{out} still holds the previous build" in message and str(failed / "build_report.json") in message
    assert json.loads((failed / "build_report.json").read_text())["reasons"] == {"missing_image": 3}
    assert len((failed / "rejects.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "build_report.json").read_text())["kept"] == 4
    loaded = load_dataset(str(out), "pairs", split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 4 * 6
    build_into(out, good, overwrite=True)  # a later good build clears the failed attempt's report
    assert not failed.exists()


def test_a_first_build_that_fails_leaves_no_folder_that_looks_built(tmp_path: Path) -> None:
    bad = write_release(tmp_path / "bad", [row(f"svit-{i}", GOOD) for i in range(4)], images={"svit-0": jpeg()})
    with pytest.raises(UserError, match=r"this attempt's report: .*vlfeedback\.failed/build_report\.json"):
        build_into(tmp_path / "vlfeedback", bad)
    assert not (tmp_path / "vlfeedback").exists()
    good = write_release(tmp_path / "good", [row(f"svit-{i}", GOOD) for i in range(4)])
    assert build_into(tmp_path / "vlfeedback", good)["kept"] == 4  # no --overwrite needed after a failure


def test_a_stage_removes_only_the_images_its_own_earlier_run_wrote(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    with LayoutWriter(out, "responses.jsonl") as writer:
        for name in ("a", "b"):
            writer.add({"id": name}, jpeg())
    images = out / "merged_images"
    (images / "user-photo.jpg").write_bytes(b"mine")
    (images / "README.txt").write_text("what these are")
    with caplog.at_level(logging.WARNING), LayoutWriter(out, "responses.jsonl") as writer:
        writer.add({"id": "a"}, jpeg())
    assert sorted(p.name for p in images.iterdir()) == ["README.txt", "a.jpg", "user-photo.jpg"]  # b: this stage's
    assert "2 file(s) this stage did not write (README.txt, user-photo.jpg); kept" in caplog.text
    (out / "responses.jsonl").unlink()
    with LayoutWriter(out, "other.jsonl") as writer:  # another stage's record does not let it delete a.jpg
        writer.add({"id": "c"}, jpeg())
    assert sorted(p.name for p in images.iterdir()) == ["README.txt", "a.jpg", "c.jpg", "user-photo.jpg"]


def test_an_interrupted_stage_records_what_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), LayoutWriter(out, "responses.jsonl") as writer:
        writer.add({"id": "a"}, jpeg())
        raise RuntimeError("killed")
    with LayoutWriter(out, "responses.jsonl") as writer:
        writer.add({"id": "b"}, jpeg())
    assert sorted(p.name for p in (out / "merged_images").iterdir()) == ["b.jpg"]


def test_training_after_a_rebuild_of_the_same_source_hits_the_reference_cache(tmp_path: Path) -> None:
    """The reference cache lives beside a local dataset (``DIR/.ref_logps``): a rebuild must not cost its misses."""
    from vlfeedback_kit.cli import main as cli_main
    from vlfeedback_kit.training import dpo
    from vlfeedback_kit.training.commands import RECIPES

    assert cli_main(["sample", "--out", str(tmp_path / "sample"), "--num-instructions", "4"]) == 0
    assert cli_main(["tiny-model", "--family", "qwen2_vl", "--out", str(tmp_path / "tiny")]) == 0
    data = tmp_path / "vlfeedback"

    def train(run: str) -> dict:
        flags = ["--dataset_name", str(data), "--model_name_or_path", str(tmp_path / "tiny"), "--max_steps", "1"]
        flags += ["--ref_precompute", "false", "--output_dir", str(tmp_path / run)]
        dpo.main(*dpo.parse_arguments(["--config", str(RECIPES / "tiny.yaml"), *flags]))
        return json.loads((tmp_path / run / "run_info.json").read_text())["reference_cache"]

    assert cli_main(["build", "--source", str(tmp_path / "sample"), "--out", str(data), "--quiet"]) == 0
    first = train("first")
    assert first["misses"] > 0
    assert cli_main(["build", "--source", str(tmp_path / "sample"), "--out", str(data), "--quiet", "--overwrite"]) == 0
    second = train("second")
    assert (second["misses"], second["hits"], second["reference_forwards"]) == (0, first["misses"], 0)
    assert second["file"] == first["file"]


def test_a_reference_cache_write_that_fails_keeps_the_cache_it_had(tmp_path: Path, monkeypatch) -> None:
    """Other runs read the cache file: it is replaced whole or not at all, and a failed write leaves no stray file."""
    import pyarrow.parquet as pq

    from vlfeedback_kit.training.ref_cache import RefLogpCache

    cache = RefLogpCache.open(tmp_path / ".ref_logps", {"dataset": "d"})
    cache.add(["a"], [-1.0], [-2.0])
    cache.save()

    def dies_halfway(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    cache.add(["b"], [-3.0], [-4.0])
    with pytest.raises(OSError, match="disk full"):
        cache.save()
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / ".ref_logps").iterdir()] == [cache.path.name]
    assert RefLogpCache.open(tmp_path / ".ref_logps", {"dataset": "d"}).values == {"a": (-1.0, -2.0)}
