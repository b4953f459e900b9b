"""`vlfeedback publish`: versioned releases against a loopback server that speaks the Hub's protocol.

Round trips (sample → build → publish → vanilla `load_dataset` at the tag in a fresh process), the changelog of a
second release, version rules, interrupted uploads, the token, dry runs, branches, private repos and model runs.

Run: pytest tests/test_publish.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard
from support.hub_server import HubServer
from support.run_dirs import EVAL_RESULTS, run_info

from vlfeedback_kit.cards.changelog import (
    Snapshot,
    changelog_section,
    compare,
    format_entry,
    previous_entries,
    row_digests,
)
from vlfeedback_kit.cards.publish import DATASET_EXCLUDE, Release, previous_version, upload_plan
from vlfeedback_kit.cli import main

CLI = [sys.executable, "-m", "vlfeedback_kit.cli"]
REPO = "vlf-org/vlfeedback"
TOKEN = "hf_publishSECRETtoken0123456789abcdef"
LOAD_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    from datasets import get_dataset_config_names, load_dataset
    from PIL.Image import Image

    repo, revisions = sys.argv[1], sys.argv[2:]
    out = {}
    for revision in revisions:
        out[revision] = {}
        for config in get_dataset_config_names(repo, revision=revision):
            dataset = load_dataset(repo, config, revision=revision)
            column = "image" if config == "raw" else "images"
            first = dataset["train"][0][column]
            out[revision][config] = {
                "rows": {split: ds.num_rows for split, ds in dataset.items()},
                "image_decoded": isinstance(first if config == "raw" else first[0], Image),
            }
    print(json.dumps(out))
    """
)


def edit_release(source: Path, target: Path) -> dict[str, list[str]]:
    """A second version of a release: 3 rows dropped, 2 added, 2 re-rated, 1 response rewritten."""
    shutil.copytree(source, target)
    jsonl = target / "vlfeedback_sample.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    removed = [r["id"] for r in rows[:3]]
    rows = rows[3:]
    for row, aspect in ((rows[0], "Helpfulness"), (rows[1], "Visual Faithfulness")):
        annotation = row["completions"][0]["annotations"][aspect]
        annotation["Rating"] = "1" if annotation["Rating"] != "1" else "5"
    rows[2]["completions"][0]["response"] += " (revised)"
    added = []
    for original in rows[3:5]:
        copy = json.loads(json.dumps(original)) | {"id": original["id"] + "-copy"}
        shutil.copy(target / "merged_images" / f"{original['id']}.jpg", target / "merged_images" / f"{copy['id']}.jpg")
        rows.append(copy)
        added.append(copy["id"])
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"removed": removed, "added": added, "changed": [r["id"] for r in rows[:3]]}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """v1: the sample (40 instructions) with best-vs-worst; v2: edited rows, margin-1 instead of best-vs-worst."""
    root = tmp_path_factory.mktemp("publish")
    commands = [
        ["sample", "--out", "release_v1", "--num-instructions", "40"],
        ["build", "--source", "release_v1", "--out", "v1", "--quiet", "--pairs", "best-vs-worst"],
    ]
    for args in commands:
        done = subprocess.run([*CLI, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    edits = edit_release(root / "release_v1", root / "release_v2")
    done = subprocess.run(
        [*CLI, "build", "--source", "release_v2", "--out", "v2", "--quiet", "--pairs", "margin-1"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return {"v1": root / "v1", "v2": root / "v2", "edits": edits}


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The write token, given the way users give it: HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def publish(folder: Path, version: str, *extra: str) -> int:
    """``vlfeedback publish dataset`` in-process."""
    return main(["publish", "dataset", str(folder), "--repo", REPO, "--version", version, *extra])


def splits(folder: Path) -> dict:
    return json.loads((folder / "build_report.json").read_text())["splits"]


def tree(hub: HubServer, revision: str) -> dict[str, bytes]:
    """The repo's files at ``revision`` (without the Hub's own .gitattributes)."""
    commit = hub.repo(REPO).resolve(revision)
    return {path: stored.content for path, stored in commit.files.items() if path != ".gitattributes"}


def test_version_rules_and_plan_are_pure() -> None:
    release = Release(REPO, "1.2.0")
    assert previous_version([], release) is None
    assert previous_version(["v1.10.0", "v1.9.0", "nightly", "v2-beta"], Release(REPO, "v1.11.0")) == "v1.10.0"
    with pytest.raises(Exception, match="already has tag v1.2.0"):
        previous_version(["v1.2.0"], release)
    with pytest.raises(Exception, match="not greater than the latest release v1.10.0"):
        previous_version(["v1.10.0"], Release(REPO, "1.9.9"))
    for bad in ("1.0", "v1", "1.0.0-rc1", "latest"):
        with pytest.raises(Exception, match="must be X.Y.Z"):
            Release(REPO, bad)
    with pytest.raises(Exception, match="must be ORG/NAME"):
        Release("vlfeedback", "1.0.0")


def test_upload_plan_keeps_rejects_and_hidden_files_local(tmp_path: Path) -> None:
    for name in ("data/raw/train-00000-of-00001.parquet", "rejects.jsonl", ".cache/x", "build_report.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    plan = upload_plan(tmp_path, DATASET_EXCLUDE, b"card")
    assert list(plan) == ["README.md", "build_report.json", "data/raw/train-00000-of-00001.parquet"]
    assert plan["README.md"] == b"card"


def test_changelog_compares_rows_by_id_and_keeps_older_entries() -> None:
    def raw(row_id: str, rating: int = 5, response: str = "a", prompt: str = "p") -> dict:
        annotations = {"Helpfulness": {"Rating": rating, "Rationale": "r"}}
        return {
            "id": row_id,
            "prompt": prompt,
            "models": ["m"],
            "completions": [{"model": "m", "response": response, "annotations": annotations}],
        }

    policy = {"policy": {"strategy": "all-pairs", "min_margin": 0.0}, "fingerprint": "aaa"}
    old = Snapshot(
        "v1.0.0",
        rows=row_digests([raw("a"), raw("b"), raw("c"), raw("d"), raw("e")]),
        splits={"raw": {"train": 5}, "old": {"train": 1}},
        policies={"pairs": policy, "old": policy},
    )
    new = Snapshot(
        "this build",
        rows=row_digests([raw("a"), raw("b", rating=1), raw("c", response="b"), raw("d", prompt="q"), raw("f")]),
        splits={"raw": {"train": 5}},
        policies={"pairs": {"policy": {"strategy": "all-pairs", "min_margin": 1.0}, "fingerprint": "bbb"}},
        judges=[{"model": "gpt-4o", "template_sha256": "f" * 64, "items": 5}],
    )
    diff = compare(old, new)
    assert diff["rows"]["added"] == ["f"] and diff["rows"]["removed"] == ["e"]
    assert diff["rows"]["changed"] == ["b", "c", "d"] and diff["rows"]["unchanged"] == 1
    assert diff["rows"]["changed_parts"] == {"prompt": 1, "responses": 1, "judgements": 1}
    entry = format_entry("v1.1.0", "2026-01-02", diff)
    assert entry.startswith("### v1.1.0 — 2026-01-02\n\nCompared with v1.0.0:")
    assert "5 → 5; 1 added, 1 removed, 3 changed (in prompt 1, responses 1, judgements 1), 1 unchanged" in entry
    assert "`old` train 1 → removed" in entry and "`pairs` changed: min_margin 0.0 → 1.0" in entry
    assert "`old` removed:" in entry and "→ `gpt-4o` (template sha256 `ffffffffffff`, 5 items)" in entry
    previous_card = "# X\n\n## Changelog\n\n### v1.0.0 — 2025-12-01\n\nFirst release.\n\n## Citation\n\nbib\n"
    assert previous_entries(previous_card) == "### v1.0.0 — 2025-12-01\n\nFirst release."
    assert changelog_section(entry, previous_card) == f"{entry}\n\n### v1.0.0 — 2025-12-01\n\nFirst release."


def test_releases_load_back_at_their_tags_in_a_fresh_process(releases, hub, token, tmp_path, capsys) -> None:
    assert publish(releases["v1"], "1.0.0") == 0
    printed = capsys.readouterr().out
    for config in splits(releases["v1"]):
        assert f'load_dataset("{REPO}", "{config}", revision="v1.0.0")' in printed
    assert publish(releases["v2"], "1.1.0") == 0

    env = {**os.environ, **hub.client_env(), "HF_HOME": str(tmp_path / "fresh_home"), "HF_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, REPO, "v1.0.0", "v1.1.0"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for revision, version in (("v1.0.0", "v1"), ("v1.1.0", "v2")):
        assert {c: info["rows"] for c, info in loaded[revision].items()} == splits(releases[version])
        assert all(info["image_decoded"] for info in loaded[revision].values())
    assert set(loaded["v1.0.0"]) == {"raw", "pairs", "best-vs-worst"}
    assert set(loaded["v1.1.0"]) == {"raw", "pairs", "margin-1"}


def test_second_release_changelog_and_exact_dry_run_tree(releases, hub, token, tmp_path, capsys) -> None:
    assert publish(releases["v1"], "1.0.0") == 0
    commits = len(hub.repo(REPO).commits)
    dry = tmp_path / "dry"
    assert publish(releases["v2"], "1.1.0", "--dry-run", str(dry)) == 0
    assert len(hub.repo(REPO).commits) == commits and "v1.1.0" not in hub.repo(REPO).tags
    stale = re.search(r"would also delete (\d+) stale file\(s\): (.+)", capsys.readouterr().out)
    v1_files = {p.relative_to(releases["v1"]).as_posix() for p in (releases["v1"] / "data").rglob("*.parquet")}
    v2_files = {p.relative_to(releases["v2"]).as_posix() for p in (releases["v2"] / "data").rglob("*.parquet")}
    assert set(stale.group(2).split(", ")) == v1_files - v2_files  # shards are content-addressed
    assert any(path.startswith("data/best-vs-worst/") for path in v1_files - v2_files)

    assert publish(releases["v2"], "1.1.0") == 0
    published = tree(hub, "v1.1.0")
    assert published == {p.relative_to(dry).as_posix(): p.read_bytes() for p in dry.rglob("*") if p.is_file()}
    assert "rejects.jsonl" not in published and "build_report.json" in published
    assert not any(path.startswith("data/best-vs-worst/") for path in published)

    card = published["README.md"].decode()
    edits = releases["edits"]
    rows_before = splits(releases["v1"])["raw"]["train"]
    assert (
        f"{rows_before} → {rows_before - 1}; 2 added, 3 removed, 3 changed "
        "(in prompt 0, responses 1, judgements 2)" in card
    )
    for kind in ("added", "removed", "changed"):
        assert f"  - {kind}: " + ", ".join(f"`{i}`" for i in sorted(edits[kind])) in card
    assert "`best-vs-worst` removed:" in card and "`margin-1` added:" in card
    entries = previous_entries(card)
    assert entries.index("### v1.1.0 — ") < entries.index("### v1.0.0 — ") and "First release" in entries
    assert 'revision="v1.1.0"' in card and DatasetCard(card).data.to_dict()["configs"][2]["config_name"] == "margin-1"
    assert previous_entries(tree(hub, "v1.0.0")["README.md"].decode()).startswith("### v1.0.0 — ")


def test_existing_or_lower_versions_are_refused(releases, hub, token, capsys) -> None:
    assert publish(releases["v1"], "1.0.0") == 0
    state = (dict(hub.repo(REPO).tags), dict(hub.repo(REPO).branches))
    assert publish(releases["v2"], "1.0.0") == 2
    assert "already has tag v1.0.0" in capsys.readouterr().err
    assert publish(releases["v2"], "0.9.0") == 2
    assert "not greater than the latest release v1.0.0" in capsys.readouterr().err
    assert (hub.repo(REPO).tags, hub.repo(REPO).branches) == state


COMMIT = r"/api/datasets/vlf-org/vlfeedback/commit/main$"
LFS_PUT = r"/info/lfs/objects/[0-9a-f]{64}$"


@pytest.mark.parametrize(
    "fault",
    [
        {"pattern": LFS_PUT, "method": "PUT", "status": 403},
        {"pattern": COMMIT, "status": 500},
        {"pattern": COMMIT, "status": 502, "after": True},
    ],
    ids=["lfs-upload", "commit", "commit-answer-lost"],
)
def test_interrupted_upload_leaves_the_previous_release_intact(releases, hub, token, capsys, fault) -> None:
    assert publish(releases["v1"], "1.0.0") == 0
    before = tree(hub, "v1.0.0")
    head = hub.repo(REPO).branches["main"]
    hub.fail_next(**fault)
    assert publish(releases["v2"], "1.1.0") == 2
    error = capsys.readouterr().err
    assert "no tag was created or moved (v1.1.0 does not exist)" in error and "Re-run the same command" in error
    assert hub.repo(REPO).tags == {"v1.0.0": head} and tree(hub, "v1.0.0") == before
    if fault.get("after"):  # the commit landed, its answer was lost: said so, and main moved
        assert "the Hub did record a commit" in error and hub.repo(REPO).branches["main"] != head
    else:
        assert "nothing was committed: 'main' is unchanged" in error and hub.repo(REPO).branches["main"] == head

    uploads = len(hub.calls(LFS_PUT, "PUT"))
    assert publish(releases["v2"], "1.1.0") == 0
    assert set(hub.repo(REPO).tags) == {"v1.0.0", "v1.1.0"} and tree(hub, "v1.0.0") == before
    assert tree(hub, "v1.1.0")["README.md"].decode().count("### v1.1.0 — ") == 1
    if fault["pattern"] == COMMIT:  # the LFS objects reached the Hub before the commit failed: not sent again
        assert len(hub.calls(LFS_PUT, "PUT")) == uploads


def test_token_never_appears_in_output_traffic_or_files(releases, hub, tmp_path) -> None:
    env = {**os.environ, **hub.client_env(), "HF_HOME": str(tmp_path / "hf_home")}
    command = [*CLI, "publish", "dataset", str(releases["v1"]), "--repo", REPO, "--version", "1.0.0"]
    missing = subprocess.run(command, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no Hugging Face token" in missing.stderr and not hub.requests
    runs = [
        subprocess.run([*command, *extra], env={**env, "HF_TOKEN": TOKEN}, capture_output=True, text=True)
        for extra in (["--dry-run", str(tmp_path / "dry")], [])
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert hub.tokens == {TOKEN} and hub.leaks(TOKEN) == []
    writes = hub.calls(r"/api/datasets/.+/(preupload|commit)/|/api/repos/create$|/tag/")
    assert writes and all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in writes)
    assert all(TOKEN not in r.stdout + r.stderr for r in runs)
    stored = [f.content for c in hub.repo(REPO).commits.values() for f in c.files.values()]
    assert not any(TOKEN.encode() in content for content in stored)
    written = [p for root in (releases["v1"], tmp_path / "dry") for p in root.rglob("*") if p.is_file()]
    assert written and not any(TOKEN.encode() in p.read_bytes() for p in written)


def test_private_repo_and_release_branch(releases, hub, token, capsys) -> None:
    assert publish(releases["v1"], "1.0.0", "--private") == 0
    assert hub.repo(REPO).private
    main_head = hub.repo(REPO).branches["main"]
    assert publish(releases["v2"], "1.1.0", "--revision", "release") == 0
    repo = hub.repo(REPO)
    assert repo.branches["main"] == main_head and repo.tags["v1.1.0"] == repo.branches["release"]
    assert repo.commits[repo.branches["release"]].parent == main_head
    assert "commit" in capsys.readouterr().out

    HfApi().create_repo("vlf-org/public", repo_type="dataset")
    assert (
        main(
            ["publish", "dataset", str(releases["v1"]), "--repo", "vlf-org/public", "--version", "1.0.0", "--private"]
        )
        == 2
    )
    assert "exists and is public" in capsys.readouterr().err


def test_publish_model_run_dir(hub, token, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    files = {
        "adapter_config.json": b"{}",
        "adapter_model.safetensors": os.urandom(2048),
        "tokenizer.json": b"{}",
        "training_curves.png": b"\x89PNG\r\n\x1a\nnot really",
        "eval_results.json": json.dumps(EVAL_RESULTS).encode(),
        "run_info.json": json.dumps(run_info(adapter=True)).encode(),
        "checkpoint-10/adapter_model.safetensors": b"old",
        "optimizer.pt": b"state",
    }
    for name, content in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)
    command = ["publish", "model", str(run), "--repo", "vlf-org/silkie", "--version", "1.0.0"]
    assert main(command) == 0
    assert 'PeftModel.from_pretrained(base_model, "vlf-org/silkie", revision="v1.0.0")' in capsys.readouterr().out
    repo = hub.repo("vlf-org/silkie", repo_type="model")
    published = repo.resolve("v1.0.0").files
    assert set(published) == {".gitattributes", "README.md", *list(files)[:6]}
    card = ModelCard(published["README.md"].content.decode())
    assert card.data.library_name == "peft" and len(card.data.eval_results) == 2
    assert 'model_id = "vlf-org/silkie"' in str(card) and 'revision="v1.0.0"' in str(card)
    assert main(command) == 2 and "already has tag v1.0.0" in capsys.readouterr().err


def test_snapshot_reads_a_release_made_elsewhere(releases, tmp_path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    from vlfeedback_kit.cards.changelog import read_snapshot

    (tmp_path / "data" / "raw").mkdir(parents=True)
    for path in (releases["v1"] / "data" / "raw").glob("*.parquet"):
        shutil.copy(path, tmp_path / "data" / "raw" / path.name)
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: raw\n  data_files: data/raw/*.parquet\n---\n")
    rows = splits(releases["v1"])["raw"]["train"]
    elsewhere = read_snapshot(LocalFileSystem(), tmp_path.as_posix(), "v0.1.0")
    assert elsewhere.splits == {"raw": {"train": rows}} and len(elsewhere.rows) == rows
    assert (elsewhere.policies, elsewhere.judges, elsewhere.source_name) == ({}, None, None)
    diff = compare(elsewhere, read_snapshot(LocalFileSystem(), releases["v1"].as_posix(), "this build"))
    assert diff["rows"]["unchanged"] == rows and diff["source"] == (None, "release_v1")
    assert "`pairs` new → train" in format_entry("v1.0.0", "2026-01-01", diff)
