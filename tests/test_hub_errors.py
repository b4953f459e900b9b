"""Every Hub path, with the Hub offline, unreachable or refusing: one line naming the endpoint and the cause, exit 2,
and no retries; a dry-run publish works offline. Reads of a Hub release fetch footers and small columns only.

Run: pytest tests/test_hub_errors.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, HfFileSystem
from release_factory import row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.cards.dataset import write_dataset_card
from vlfeedback_kit.cli import main

CLI = [sys.executable, "-m", "vlfeedback_kit.cli"]
GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub-errors")
    release = write_release(root / "release", [row(f"svit-{i}", GOOD) for i in range(4)])
    build(BuildOptions(source=str(release), out_dir=root / "vlfeedback", progress=False, card=write_dataset_card))
    return root / "vlfeedback"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_offline_mode_gives_one_line_and_dry_runs_still_work(folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_x"}
    endpoint = "https://huggingface.co"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, cwd=tmp_path)

    for args in (
        ["build", "--source", "org/vlf", "--out", "built", "--quiet"],
        ["inspect", "org/vlf"],
        ["publish", "dataset", str(folder), "--repo", "me/vlf", "--version", "1.0.0"],
    ):
        done = run(*args)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert f"at {endpoint}: offline mode is on (HF_HUB_OFFLINE=1)" in line, line
    done = run("publish", "dataset", str(folder), "--repo", "me/vlf", "--version", "1.0.0", "--dry-run", "tree")
    assert done.returncode == 0, done.stderr
    assert "the changelog against the Hub was skipped" in done.stdout and "offline mode" in done.stdout
    assert "First release" in (tmp_path / "tree" / "README.md").read_text()
    assert {p.name for p in (tmp_path / "tree" / "data").iterdir()} == {"raw", "pairs"}

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    (run_dir / "run_info.json").write_text(json.dumps(run_info()))
    done = run("publish", "model", str(run_dir), "--repo", "me/silkie", "--version", "1.0.0", "--dry-run", "mtree")
    assert done.returncode == 0, done.stderr
    assert "first release" in done.stdout and (tmp_path / "mtree" / "README.md").is_file()


def run_info() -> dict:
    from support.run_dirs import run_info as fabricate

    return fabricate(adapter=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("verb", ["build", "inspect", "publish"])
def test_refused_missing_or_unreachable_hub_fails_fast_in_one_line(
    verb: str, folder: Path, hub, tmp_path: Path, capsys, monkeypatch
) -> None:
    from huggingface_hub import constants

    args = {
        "build": ["build", "--source", "org/vlf", "--out", str(tmp_path / "built"), "--quiet"],
        "inspect": ["inspect", "org/vlf"],
        "publish": ["publish", "dataset", str(folder), "--repo", "org/vlf", "--version", "1.0.0"],
    }[verb]
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    HfApi(endpoint=hub.url, token="hf_test").create_repo("org/vlf", repo_type="dataset")

    hub.requests.clear()
    hub.fail_next(r".*", 503)  # huggingface_hub retries a 503 with backoff where it retries at all: never here
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"at {hub.url}: HTTP 503" in line and len(hub.requests) == 1, (line, [r.path for r in hub.requests])

    hub.fail_next(r".*", 403)
    assert main(args) == 2
    assert f"at {hub.url}: 403, not authorized" in one_error_line(capsys.readouterr().err)

    if verb != "publish":  # publishing to a repo that does not exist creates it
        assert main([a.replace("org/vlf", "org/missing") for a in args]) == 2
        assert f"at {hub.url}: 404, repository not found" in one_error_line(capsys.readouterr().err)

    unreachable = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", unreachable)
    assert main(args) == 2
    assert f"at {unreachable}: unreachable (ConnectError" in one_error_line(capsys.readouterr().err)


def test_reading_a_hub_release_fetches_footers_and_small_columns_only(hub, tmp_path: Path) -> None:
    from vlfeedback_kit.builders.inspect import summarize
    from vlfeedback_kit.builders.sample import write_sample
    from vlfeedback_kit.cards.changelog import read_snapshot

    write_sample(tmp_path / "release", num_instructions=300)
    build(
        BuildOptions(
            source=str(tmp_path / "release"), out_dir=tmp_path / "vlfeedback", progress=False, card=write_dataset_card
        )
    )
    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/built", repo_type="dataset")
    api.upload_folder(folder_path=tmp_path / "vlfeedback", repo_id="org/built", repo_type="dataset")
    api.create_tag("org/built", tag="v1.0.0", repo_type="dataset")
    sizes = {
        config: sum(p.stat().st_size for p in (tmp_path / "vlfeedback" / "data" / config).glob("*.parquet"))
        for config in ("raw", "pairs")
    }

    hub.requests.clear()
    summary = summarize("org/built", revision="v1.0.0")
    assert summary["configs"]["raw"] == {"train": 300} and summary["example"]["image"].startswith("JPEG")
    fetched = hub.bytes_sent(r"/resolve/")
    assert fetched < 0.1 * (sizes["raw"] + sizes["pairs"]), (fetched, sizes)

    hub.requests.clear()
    snapshot = read_snapshot(HfFileSystem(skip_instance_cache=True), "datasets/org/built@v1.0.0", "v1.0.0")
    assert len(snapshot.rows) == 300
    fetched = hub.bytes_sent(r"/resolve/")
    assert fetched < 0.1 * sizes["raw"], (fetched, sizes)


def test_only_errors_from_the_hub_are_reported_as_hub_errors() -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    from vlfeedback_kit.errors import hub_error, is_hub_error

    assert is_hub_error(OfflineModeIsEnabled("offline")) and is_hub_error(ConnectionRefusedError(111, "refused"))
    assert not is_hub_error(FileNotFoundError("a local file")) and not is_hub_error(OSError("cannot identify image"))
    assert "unreachable (ConnectionRefusedError" in str(hub_error("reading", ConnectionRefusedError(111, "refused")))
