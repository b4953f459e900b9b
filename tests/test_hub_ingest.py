"""`vlfeedback build --source ORG/NAME`: the original release and a Parquet copy, fetched from a (loopback) Hub."""

import json
import os
import subprocess
import sys
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi
from release_factory import row, write_release
from support.hub_server import dataset_repo

from vlfeedback_kit.cards.dataset import write_dataset_card

GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


def build_from_hub(hub, tmp_path, repo_id, *extra):
    out = tmp_path / "built"
    env = {**os.environ, **hub.client_env(), "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlfeedback_kit.cli",
            "build",
            "--source",
            repo_id,
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    return done, out


def test_original_release_layout_from_the_hub_at_a_revision(hub, tmp_path):
    rows = [row(f"svit-{i}", GOOD) for i in range(8)]
    release = write_release(tmp_path / "release", rows)
    with zipfile.ZipFile(release / "merged_images.zip", "w") as archive:
        for path in sorted((release / "merged_images").iterdir()):
            archive.write(path, f"merged_images/{path.name}")
    api = dataset_repo(
        hub,
        "org/vlfeedback-original",
        {
            "vlfeedback_80k.jsonl": release / "vlfeedback_80k.jsonl",
            "merged_images.zip": release / "merged_images.zip",
        },
    )
    api.create_tag("org/vlfeedback-original", tag="v1", repo_type="dataset")
    (release / "more.jsonl").write_text(json.dumps(row("svit-99", GOOD)) + "\n")
    api.upload_file(
        path_or_fileobj=release / "more.jsonl",
        path_in_repo="vlfeedback_80k.jsonl",
        repo_id="org/vlfeedback-original",
        repo_type="dataset",
    )  # main moves on; v1 must not

    done, out = build_from_hub(hub, tmp_path, "org/vlfeedback-original", "--revision", "v1")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "build_report.json").read_text())
    assert (report["read"], report["kept"], report["revision"]) == (8, 8, "v1")
    assert report["splits"]["pairs"] == {"train": 48}


def test_parquet_copy_from_the_hub(hub, tmp_path):
    rows = [row(f"lrv-{i}", GOOD) for i in range(5)]
    release = write_release(tmp_path / "release", rows)
    table = pa.Table.from_pylist(
        [
            r | {"image": {"bytes": (release / "merged_images" / f"{r['id']}.jpg").read_bytes(), "path": None}}
            for r in rows
        ]
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    dataset_repo(
        hub, "org/vlfeedback-parquet", {"data/train-00000-of-00001.parquet": tmp_path / "train-00000-of-00001.parquet"}
    )
    done, out = build_from_hub(hub, tmp_path, "org/vlfeedback-parquet")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "build_report.json").read_text())["kept"] == 5


def test_unknown_hub_repo_is_a_clear_error(hub, tmp_path):
    done, _ = build_from_hub(hub, tmp_path, "org/does-not-exist")
    assert done.returncode == 2
    assert "Hub dataset 'org/does-not-exist'" in done.stderr and "Traceback" not in done.stderr


def test_inspect_a_hub_repo_at_a_revision(hub, tmp_path):
    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.builders.inspect import summarize

    release = write_release(tmp_path / "release", [row(f"m3it-{i}", GOOD) for i in range(6)])
    build(BuildOptions(source=str(release), out_dir=tmp_path / "vlfeedback", progress=False, card=write_dataset_card))
    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/built", repo_type="dataset")
    api.upload_folder(folder_path=tmp_path / "vlfeedback", repo_id="org/built", repo_type="dataset")
    api.create_tag("org/built", tag="v1.0.0", repo_type="dataset")

    summary = summarize("org/built", revision="v1.0.0")
    assert summary["configs"] == {"raw": {"train": 6}, "pairs": {"train": 36}}
    assert summary["sources"] == {"M3IT": 6}
    assert summary["pairing"]["pairs"]["counts"]["pairs"] == 36
    assert summary["example"]["id"].startswith("m3it-")


def test_a_hub_shard_with_path_ids_and_image_paths_writes_nothing_outside(hub, tmp_path):
    """Ids and image paths from a Hub repo are data: `../`, absolute ones are rejected with their reason, and no file
    appears outside the output folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    rows = [row(f"lrv-{i}", GOOD) for i in range(6)]
    release = write_release(tmp_path / "root" / "release", rows)
    image = (release / "merged_images" / "lrv-0.jpg").read_bytes()
    evil = ["../" * 40 + str(outside / "x").lstrip("/"), str(outside / "y")]
    records = [r | {"image": {"bytes": image, "path": "../" * 40 + str(outside / "z.jpg")}} for r in rows]
    records += [row(i, GOOD) | {"image": {"bytes": image, "path": f"{i}.jpg"}} for i in evil]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "shard.parquet")
    dataset_repo(hub, "org/crafted", {"data/train-00000-of-00001.parquet": tmp_path / "shard.parquet"})
    done, out = build_from_hub(hub, tmp_path / "root", "org/crafted", "--max-reject-rate", "0.5")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "build_report.json").read_text())
    assert (report["kept"], report["reasons"]) == (6, {"invalid_id": 2})
    (shard,) = (out / "data" / "raw").glob("*.parquet")
    assert {image["path"] for image in pq.read_table(shard).column("image").to_pylist()} == {"z.jpg"}  # a name
    assert list(outside.iterdir()) == []
