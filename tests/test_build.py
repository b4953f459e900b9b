"""`vlfeedback build` on hand-made releases: every input row accounted for, bad input named, all input forms."""

import json
import os
import re
import subprocess
import sys
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from release_factory import completion, jpeg, row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.cards.dataset import write_dataset_card
from vlfeedback_kit.errors import UserError

GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


def run_build(tmp_path, source, **kwargs):
    out = tmp_path / "vlfeedback"
    return out, build(BuildOptions(source=str(source), out_dir=out, progress=False, card=write_dataset_card, **kwargs))


def rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_clean_release_builds_every_config(tmp_path):
    rows = [row(f"svit-{i}", GOOD) for i in range(30)]
    out, report = run_build(tmp_path / "b", write_release(tmp_path / "rel", rows), policies={})
    assert (report["read"], report["kept"], report["rejected"]) == (30, 30, 0)
    assert report["splits"] == {"raw": {"train": 30}, "pairs": {"train": 30 * 6}}
    (shard,) = (out / "data" / "raw").iterdir()
    assert re.fullmatch(r"train-00000-of-00001-[0-9a-f]{12}\.parquet", shard.name)
    policies = json.loads((out / "pairing_policies.json").read_text())
    assert policies["pairs"]["policy"]["strategy"] == "all-pairs" and policies["pairs"]["counts"]["pairs"] == 180
    assert "config_name: pairs" in (out / "README.md").read_text()


def test_original_jpeg_bytes_are_kept_verbatim(tmp_path):
    image = jpeg((10, 200, 30), size=48)
    rel = write_release(tmp_path / "rel", [row("lrv-1", GOOD)], images={"lrv-1": image})
    out, _ = run_build(tmp_path, rel)
    table = pq.read_table(next((out / "data" / "raw").glob("*.parquet")))
    assert table.column("image").to_pylist()[0] == {"bytes": image, "path": "lrv-1.jpg"}
    pairs = pq.read_table(next((out / "data" / "pairs").glob("*.parquet")))
    assert all(images[0]["bytes"] == image for images in pairs.column("images").to_pylist())


def test_bad_rows_are_rejected_with_reasons_and_line_numbers(tmp_path):
    good = [row(f"llava-{i}", GOOD) for i in range(20)]
    missing_prompt = row("llava-nop", GOOD)
    del missing_prompt["prompt"]
    wrong_type = row("llava-type", GOOD) | {"prompt": 42}
    one = row("llava-one", [(5, 5, 5)])
    zero = row("llava-zero", []) | {"models": []}
    mismatch = row("llava-mm", GOOD) | {"models": ["a", "b", "c", "d"]}
    rows = [
        *good,
        missing_prompt,
        wrong_type,
        one,
        zero,
        mismatch,
        row("llava-0", GOOD),
        row("../escape", GOOD),
        row("llava-noimg", GOOD),
        row("llava-corrupt", GOOD),
        row("llava-trunc", GOOD),
    ]
    images = {r["id"]: jpeg() for r in rows if r["id"] not in ("llava-noimg", "../escape")}
    images["llava-corrupt"] = b"\xff\xd8 this is not a jpeg"
    images["llava-trunc"] = jpeg(size=256)[:-200]
    rel = write_release(tmp_path / "rel", rows, images=images, lines=[b"\xff\xfe not utf-8", b"{not json"])
    out, report = run_build(tmp_path, rel, max_reject_rate=1.0)

    assert report["read"] == len(rows) + 2 == report["kept"] + report["rejected"]
    assert report["kept"] == 20
    assert report["reasons"] == {
        "duplicate_id": 1,
        "invalid_id": 1,
        "invalid_json": 1,
        "invalid_type": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "missing_image": 1,
        "models_mismatch": 1,
        "too_few_completions": 2,
        "unreadable_image": 2,
    }
    by_reason = {}
    for entry in rejects(out):
        by_reason.setdefault(entry["reason"], []).append(entry)
        assert entry["fix"] and entry["file"] == "vlfeedback_80k.jsonl" and entry["line"] >= 1
    assert by_reason["duplicate_id"][0]["line"] == 26 and by_reason["duplicate_id"][0]["id"] == "llava-0"
    assert by_reason["invalid_utf8"][0]["line"] == len(rows) + 1
    assert "truncated" in " ".join(e["detail"] for e in by_reason["unreadable_image"])
    assert "prompt" in by_reason["missing_field"][0]["detail"]


def test_unparseable_ratings_become_null_and_are_counted_not_rejected(tmp_path):
    bad = row("svit-x", GOOD)
    bad["completions"][0]["annotations"]["Helpfulness"]["Rating"] = "N/A"
    bad["completions"][1]["annotations"]["Visual Faithfulness"]["Rating"] = "7"
    out, report = run_build(tmp_path, write_release(tmp_path / "rel", [bad, row("svit-y", GOOD)]))
    assert report["rejected"] == 0
    assert report["null_ratings"] == {"Helpfulness": 1, "Visual Faithfulness": 1, "Ethical Considerations": 0}
    raw = pq.read_table(next((out / "data" / "raw").glob("*.parquet"))).to_pylist()
    assert raw[0]["completions"][0]["annotations"]["Helpfulness"] == {
        "Rating": None,
        "Rationale": "Helpfulness rationale",
    }
    # the two responses with a null take no pairs: 1 pair left in svit-x (responses 2 vs 3), all 6 in svit-y
    assert report["splits"]["pairs"]["train"] == 1 + 6


def test_reject_rate_above_limit_fails_and_keeps_only_the_report(tmp_path):
    rows = [row(f"svit-{i}", GOOD) for i in range(10)]
    rel = write_release(tmp_path / "rel", rows, images={f"svit-{i}": jpeg() for i in range(8)})
    with pytest.raises(UserError, match=r"2 of 10 rows rejected \(20.0% > --max-reject-rate 5.0%\)"):
        run_build(tmp_path, rel)
    failed = tmp_path / "vlfeedback.failed"  # beside --out, which a failed build never creates or touches
    assert not (tmp_path / "vlfeedback").exists()
    assert sorted(p.name for p in failed.iterdir()) == ["build_report.json", "rejects.jsonl"]
    assert json.loads((failed / "build_report.json").read_text())["reasons"] == {"missing_image": 2}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "source path does not exist"),
        ("empty", "holds no rows"),
        ("noimages", "no merged_images/ folder"),
        ("twojsonl", "several \\*.jsonl files"),
    ],
)
def test_unusable_inputs_get_clear_errors(tmp_path, setup, message):
    rel = tmp_path / "rel"
    if setup != "missing":
        write_release(rel, [])
    if setup == "noimages":
        (rel / "merged_images").rmdir()
    if setup == "twojsonl":
        (rel / "vlfeedback_80k.jsonl").rename(rel / "part1.jsonl")
        (rel / "part2.jsonl").write_text("")
    with pytest.raises(UserError, match=message):
        run_build(tmp_path, rel)


def test_zip_images_and_parquet_copy_give_the_same_raw_rows(tmp_path):
    rows = [row(f"m3it-{i}", GOOD) for i in range(12)]
    folder_rel = write_release(tmp_path / "rel", rows)
    zip_rel = write_release(tmp_path / "zip", rows)
    with zipfile.ZipFile(zip_rel / "merged_images.zip", "w") as archive:
        for path in sorted((zip_rel / "merged_images").iterdir()):
            archive.write(path, f"merged_images/{path.name}")
            path.unlink()
    (zip_rel / "merged_images").rmdir()
    parquet_rows = [
        r
        | {
            "image": {
                "bytes": (folder_rel / "merged_images" / f"{r['id']}.jpg").read_bytes(),
                "path": f"{r['id']}.jpg",
            }
        }
        for r in rows
    ]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(parquet_rows), tmp_path / "pq" / "train-00000.parquet")

    tables = []
    for name, source in (("a", folder_rel), ("b", zip_rel), ("c", tmp_path / "pq")):
        out, report = run_build(tmp_path / name, source)
        assert report["kept"] == 12
        tables.append(pq.read_table(next((out / "data" / "raw").glob("*.parquet"))))
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_eval_split_is_by_instruction_and_seeded(tmp_path):
    rows = [row(f"svit-{i}", GOOD) for i in range(400)]
    rel = write_release(tmp_path / "rel", rows)
    out, report = run_build(tmp_path, rel, eval_fraction=0.1, eval_seed=42)
    raw_test = report["splits"]["raw"]["test"]
    assert 20 <= raw_test <= 60 and report["splits"]["raw"]["train"] + raw_test == 400
    assert report["splits"]["pairs"]["test"] == 6 * raw_test
    test_ids = set(pq.read_table(next((out / "data" / "raw").glob("test-*.parquet"))).column("id").to_pylist())
    pair_ids = set(pq.read_table(next((out / "data" / "pairs").glob("test-*.parquet"))).column("id").to_pylist())
    assert pair_ids == test_ids


def test_extra_pairing_configs_and_pairs_verb(tmp_path):
    rows = [row(f"svit-{i}", GOOD) for i in range(10)]
    rel = write_release(tmp_path / "rel", rows)
    out = tmp_path / "ds"
    cli = [sys.executable, "-m", "vlfeedback_kit.cli"]
    done = subprocess.run(
        [
            *cli,
            "build",
            "--source",
            str(rel),
            "--out",
            str(out),
            "--quiet",
            "--pairs",
            "best-vs-worst",
            "--pairs",
            "gap:strategy=best-vs-all,min_margin=2",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "load_dataset(" in done.stdout
    report = json.loads((out / "build_report.json").read_text())
    assert report["splits"]["best-vs-worst"] == {"train": 10}
    assert report["splits"]["gap"] == {"train": 20}  # best (5) vs the two responses at least 2 below (2.67, 2)
    done = subprocess.run([*cli, "pairs", str(out), "margin-1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "pairing_policies.json").read_text())["margin-1"]["counts"]["pairs"] == 40
    assert "config_name: margin-1" in (out / "README.md").read_text()
    done = subprocess.run(
        [*cli, "build", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "source path does not exist" in done.stderr and "Traceback" not in done.stderr


def test_refuses_to_overwrite_without_flag(tmp_path):
    rel = write_release(tmp_path / "rel", [row("svit-1", GOOD)])
    run_build(tmp_path, rel)
    with pytest.raises(UserError, match="--overwrite"):
        run_build(tmp_path, rel)
    _, report = run_build(tmp_path, rel, overwrite=True)
    assert report["kept"] == 1


def test_completion_helper_matches_original_layout():
    item = completion("m", "r", (4, 3, 5))
    assert list(item["annotations"]) == ["Helpfulness", "Ethical Considerations", "Visual Faithfulness"]
    assert item["annotations"]["Visual Faithfulness"]["Rating"] == "3"


def test_rebuilt_folder_never_loads_from_a_stale_datasets_cache(tmp_path):
    """`datasets` caches a local folder under a key made from its card's configs, not its files' contents."""
    rel = write_release(tmp_path / "rel", [row("svit-1", GOOD), row("svit-2", GOOD)])
    load = "from datasets import load_dataset; d = load_dataset('vlfeedback', 'raw', split='train'); "
    load += "print(d[0]['completions'][0]['annotations']['Helpfulness']['Rating'])"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    ratings = []
    for rating in ("5", "2"):
        first = row("svit-1", GOOD)
        first["completions"][0]["annotations"]["Helpfulness"]["Rating"] = rating  # same bytes length, new value
        write_release(rel, [first, row("svit-2", GOOD)])
        run_build(tmp_path, rel, overwrite=True)
        done = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        ratings.append(done.stdout.strip())
    assert ratings == ["5", "2"]


def test_overwrite_replaces_only_a_folder_build_wrote(tmp_path):
    rel = write_release(tmp_path / "rel", [row("svit-1", GOOD)])
    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    (home / "documents" / "thesis.txt").write_text("precious")
    with pytest.raises(UserError, match="not written by `vlfeedback build`"):
        build(BuildOptions(source=str(rel), out_dir=home, overwrite=True, progress=False, card=write_dataset_card))
    assert (home / "documents" / "thesis.txt").read_text() == "precious"
    done = subprocess.run(
        [sys.executable, "-m", "vlfeedback_kit.cli", "build", "--source", str(rel), "--out", str(home), "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "build_report.json" in done.stderr and "Traceback" not in done.stderr
    assert (home / "documents" / "thesis.txt").is_file()
    (tmp_path / "empty").mkdir()
    assert (
        build(BuildOptions(source=str(rel), out_dir=tmp_path / "empty", progress=False, card=write_dataset_card))[
            "kept"
        ]
        == 1
    )
    assert (
        build(
            BuildOptions(
                source=str(rel), out_dir=tmp_path / "empty", overwrite=True, progress=False, card=write_dataset_card
            )
        )["kept"]
        == 1
    )


def test_the_papers_pairs_config_cannot_be_replaced(tmp_path):
    from vlfeedback_kit.builders.pairing import PairingPolicy

    out, _ = run_build(tmp_path, write_release(tmp_path / "rel", [row(f"svit-{i}", GOOD) for i in range(3)]))
    before = (out / "pairing_policies.json").read_text()
    cli = [sys.executable, "-m", "vlfeedback_kit.cli", "pairs", str(out)]
    for spec, name in (
        ("pairs:strategy=best-vs-worst", "'pairs' is always the paper's rule"),
        ("raw:seed=1", "'raw'"),
    ):
        done = subprocess.run([*cli, spec, "--overwrite"], capture_output=True, text=True)
        assert done.returncode == 2 and name in done.stderr and "cannot be replaced" in done.stderr
        assert "--overwrite" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (out / "pairing_policies.json").read_text() == before
    with pytest.raises(UserError, match="paper's rule"):
        BuildOptions(source=".", out_dir=tmp_path / "x", policies={"pairs": PairingPolicy(strategy="best-vs-worst")})
    with pytest.raises(UserError, match="cannot be replaced"):
        BuildOptions(source=".", out_dir=tmp_path / "x", policies={"raw": PairingPolicy()})


def test_pairs_dry_run_previews_an_existing_name(tmp_path):
    out, _ = run_build(tmp_path, write_release(tmp_path / "rel", [row(f"svit-{i}", GOOD) for i in range(3)]))
    cli = [sys.executable, "-m", "vlfeedback_kit.cli", "pairs", str(out)]
    assert subprocess.run([*cli, "margin-1"], capture_output=True).returncode == 0
    done = subprocess.run([*cli, "margin-1:min_margin=2", "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "would write config 'margin-1': 6 pairs" in done.stdout
    policies = json.loads((out / "pairing_policies.json").read_text())
    assert policies["margin-1"]["policy"]["min_margin"] == 1.0
    done = subprocess.run([*cli, "gap:min_margin=1,min_margin=2", "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 2 and "'min_margin' is given twice" in done.stderr


def test_help_shows_defaults_and_how_the_eval_split_is_drawn():
    help_command = [sys.executable, "-m", "vlfeedback_kit.cli", "build", "--help"]
    done = subprocess.run(help_command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    build_help = done.stdout
    flat = " ".join(build_help.split())
    for flag, default in (
        ("--max-reject-rate", "0.05"),
        ("--verify-images", "header"),
        ("--batch-size", "256"),
        ("--max-shard-mb", "500"),
    ):
        assert re.search(rf"{flag} .*?\(default:? {re.escape(default)}\)", flat), flag
    assert "hash" in flat and "23 of 300" in flat
