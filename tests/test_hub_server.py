"""The fake Hub (tests/support/hub_server.py) against the real clients: huggingface_hub and datasets.

Run: pytest tests/test_hub_server.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError
from release_factory import jpeg
from support.hub_server import HubServer, card_data, list_tree, needs_lfs, parse_range, point_clients_at

TOKEN = "hf_secretTOKENdoNotLeak0123456789"
REPO = "vlf-org/hub-check"
README = textwrap.dedent(
    """\
    ---
    license: apache-2.0
    tags:
    - preference
    configs:
    - config_name: raw
      data_files:
      - split: train
        path: data/raw/*.parquet
    - config_name: pairs
      data_files:
      - split: train
        path: data/pairs/*.parquet
    ---
    # Hub check

    A tiny dataset with two configs.
    """
)
LOAD_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    import datasets

    repo_id, config, revisions = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = {}
    for revision in revisions:
        ds = datasets.load_dataset(repo_id, config, revision=revision, split="train")
        out[revision] = [
            {**row, "image": [type(row["image"]).__module__, list(row["image"].size)]} for row in ds
        ]
    print(json.dumps(out))
    """
)


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    """An HfApi talking to the fake Hub with the secret token."""
    return HfApi(endpoint=hub.url, token=TOKEN)


def write_dataset_folder(root: Path, pairs_text: list[str]) -> None:
    """A Hub-ready dataset folder: README with two configs, one Parquet file each, with an Image() column."""
    import datasets

    features = datasets.Features(
        {"id": datasets.Value("int64"), "text": datasets.Value("string"), "image": datasets.Image()}
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(README)
    for config, texts in (("raw", ["raw-a", "raw-b", "raw-c"]), ("pairs", pairs_text)):
        rows = {
            "id": list(range(len(texts))),
            "text": texts,
            "image": [{"bytes": jpeg((40 * i, 90, 200), size=8), "path": None} for i in range(len(texts))],
        }
        (root / "data" / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / config / "train.parquet"))


def load_in_subprocess(hub: HubServer, hf_home: Path, config: str, revisions: list[str]) -> dict[str, list[dict]]:
    """Rows of ``REPO``/``config`` at each revision, loaded by datasets.load_dataset in a fresh interpreter."""
    env = {**os.environ, **hub.client_env(), "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, REPO, config, *revisions],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pure_helpers() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=7-", 10) == (7, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=5-100", 10) == (5, 9)
    with pytest.raises(ValueError):
        parse_range("bytes=10-", 10)
    assert needs_lfs("data/x.parquet", 10, b"PAR1")
    assert needs_lfs("blob.dat", 10, b"\x00\x01")
    assert needs_lfs("huge.txt", 20, b"abc", threshold=16)
    assert not needs_lfs("README.md", 10, "héllo".encode()[:2])
    files = ["a.txt", "d/b.txt", "d/e/c.txt"]
    assert list_tree(files, "", recursive=False) == ["d", "a.txt"]
    assert list_tree(files, "", recursive=True) == ["d", "d/e", "a.txt", "d/b.txt", "d/e/c.txt"]
    assert list_tree(files, "d", recursive=False) == ["d/e", "d/b.txt"]
    assert card_data(README.encode())["configs"][1]["config_name"] == "pairs"
    assert card_data(b"# no front matter") is None


def test_commit_tag_list_and_download_with_huggingface_hub(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True).endswith(f"datasets/{REPO}")
    api.create_repo(REPO, repo_type="dataset", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO, repo_type="dataset")
    assert conflict.value.response.status_code == 409

    big = os.urandom(1_200_000)
    parquet = b"PAR1 small, but the suffix sends it through LFS PAR1"
    files = {"README.md": README.encode(), "notes/hello.txt": b"hello hub\n", "weights.bin": big, "x.parquet": parquet}
    info = api.create_commit(
        REPO,
        [CommitOperationAdd(path, content) for path, content in files.items()],
        commit_message="Add files",
        repo_type="dataset",
    )
    assert len(hub.calls(r"/commit/", "POST")) == 1
    assert len(hub.calls(r"/info/lfs/objects/[0-9a-f]{64}$", "PUT")) == 2
    api.create_tag(REPO, tag="v1.0.0", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as again:
        api.create_tag(REPO, tag="v1.0.0", repo_type="dataset")
    assert again.value.response.status_code == 409

    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0.0", info.oid)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", info.oid)]
    tree = {f.path: f for f in api.list_repo_tree(REPO, repo_type="dataset", revision="v1.0.0", recursive=True)}
    assert set(tree) == {".gitattributes", "notes", *files}
    assert tree["weights.bin"].lfs.sha256 == hub.repo(REPO).commits[info.oid].files["weights.bin"].sha256
    assert tree["x.parquet"].lfs is not None and tree["notes/hello.txt"].lfs is None
    paths = api.get_paths_info(REPO, ["notes", "weights.bin", "missing"], repo_type="dataset", revision="v1.0.0")
    assert [(p.path, type(p).__name__) for p in paths] == [("notes", "RepoFolder"), ("weights.bin", "RepoFile")]
    (expanded,) = api.get_paths_info(REPO, "notes", expand=True, repo_type="dataset")
    assert expanded.last_commit.oid == info.oid and expanded.last_commit.title == "Add files"
    card = api.dataset_info(REPO, revision="v1.0.0").card_data
    assert card.license == "apache-2.0"

    # a later commit on main must not move the tag
    api.create_commit(REPO, [CommitOperationDelete("weights.bin")], commit_message="Drop", repo_type="dataset")
    cache = tmp_path / "cache"
    for name, content in files.items():
        path = hf_hub_download(REPO, name, repo_type="dataset", revision="v1.0.0", cache_dir=cache, endpoint=hub.url)
        assert Path(path).read_bytes() == content
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "weights.bin", repo_type="dataset", cache_dir=cache, endpoint=hub.url, token=TOKEN)
    snapshot = Path(
        snapshot_download(REPO, repo_type="dataset", revision="v1.0.0", cache_dir=tmp_path / "snap", endpoint=hub.url)
    )
    assert {name: (snapshot / name).read_bytes() for name in files} == files

    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    with fs.open(f"datasets/{REPO}@v1.0.0/weights.bin", "rb", block_size=4096) as handle:
        handle.seek(500_000)
        assert handle.read(1000) == big[500_000:501_000]
    assert hub.calls(r"/resolve/v1\.0\.0/weights\.bin$", "GET")[-1].status == 206
    assert fs.ls(f"datasets/{REPO}@v1.0.0/notes", detail=False) == [f"datasets/{REPO}@v1.0.0/notes/hello.txt"]
    assert [c.title for c in api.list_repo_commits(REPO, repo_type="dataset")] == [
        "Drop",
        "Add files",
        "initial commit",
    ]


def test_load_dataset_configs_at_tags_in_subprocess(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    write_dataset_folder(folder, ["pair-0", "pair-1"])
    api.create_repo(REPO, repo_type="dataset")
    api.upload_folder(repo_id=REPO, folder_path=folder, repo_type="dataset", commit_message="v1.0.0")
    api.create_tag(REPO, tag="v1.0.0", repo_type="dataset")

    loaded = load_in_subprocess(hub, tmp_path / "home1", "pairs", ["v1.0.0"])
    image = ["PIL.JpegImagePlugin", [8, 8]]
    assert loaded["v1.0.0"] == [
        {"id": 0, "text": "pair-0", "image": image},
        {"id": 1, "text": "pair-1", "image": image},
    ]

    write_dataset_folder(folder, ["pair-0 revised", "pair-1 revised", "pair-2 new"])
    api.upload_folder(repo_id=REPO, folder_path=folder, repo_type="dataset", commit_message="v1.1.0")
    api.create_tag(REPO, tag="v1.1.0", repo_type="dataset")

    loaded = load_in_subprocess(hub, tmp_path / "home2", "pairs", ["v1.0.0", "v1.1.0"])
    assert [row["text"] for row in loaded["v1.0.0"]] == ["pair-0", "pair-1"]
    assert [row["text"] for row in loaded["v1.1.0"]] == ["pair-0 revised", "pair-1 revised", "pair-2 new"]
    assert not hub.leaks(TOKEN)


def test_failed_commit_leaves_main_and_tags_untouched(hub: HubServer, api: HfApi) -> None:
    api.create_repo(REPO, repo_type="dataset")
    first = api.create_commit(
        REPO, [CommitOperationAdd("a.txt", b"first\n")], commit_message="first", repo_type="dataset"
    ).oid
    operations = [CommitOperationAdd("b.parquet", os.urandom(4096)), CommitOperationAdd("a.txt", b"second\n")]

    hub.fail_next(r"/commit/main$")
    with pytest.raises(HfHubHTTPError) as failed:
        api.create_commit(REPO, operations, commit_message="second", repo_type="dataset")
        api.create_tag(REPO, tag="v2.0.0", repo_type="dataset")
    assert failed.value.response.status_code == 500
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert [b.target_commit for b in refs.branches] == [first] and refs.tags == []
    assert len(hub.calls(r"/info/lfs/objects/[0-9a-f]{64}$", "PUT")) == 1  # the LFS part went through

    hub.fail_next(r"/info/lfs/objects/batch$", status=403)
    retry = [CommitOperationAdd("c.parquet", os.urandom(4096))]
    with pytest.raises(HfHubHTTPError):
        api.create_commit(REPO, retry, commit_message="third", repo_type="dataset")
    assert api.list_repo_refs(REPO, repo_type="dataset").branches[0].target_commit == first

    operations = [CommitOperationAdd(op.path_in_repo, op.path_or_fileobj) for op in operations]
    hub.fail_next(r"/commit/main$", status=502, after=True)  # the commit lands, its answer is lost
    with pytest.raises(HfHubHTTPError):
        api.create_commit(REPO, operations, commit_message="second", repo_type="dataset")
    assert len(hub.calls(r"/info/lfs/objects/[0-9a-f]{64}$", "PUT")) == 1  # already uploaded: not sent again
    second = api.list_repo_refs(REPO, repo_type="dataset").branches[0].target_commit
    assert second != first and hub.repo(REPO).read("a.txt", second) == b"second\n"
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            REPO, [CommitOperationAdd("d.txt", b"d")], commit_message="stale", repo_type="dataset", parent_commit=first
        )
    assert stale.value.response.status_code == 412


def test_token_only_in_authorization_header(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    api.create_repo(REPO, repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=os.urandom(2048), path_in_repo="w.bin", repo_id=REPO, repo_type="dataset")
    api.create_tag(REPO, tag="v1.0.0", repo_type="dataset")
    path = hf_hub_download(REPO, "w.bin", repo_type="dataset", cache_dir=tmp_path, endpoint=hub.url, token=TOKEN)
    assert Path(path).read_bytes() == hub.repo(REPO).read("w.bin", "v1.0.0")
    HfFileSystem(endpoint=hub.url, token=TOKEN).cat(f"datasets/{REPO}/w.bin", start=10, end=20)

    assert hub.tokens == {TOKEN}
    assert hub.leaks(TOKEN) == []
    assert all(
        headers.get("Authorization") == f"Bearer {TOKEN}" for _, target, headers in hub.requests if "/api/" in target
    )
    with pytest.raises(HfHubHTTPError):  # a private repo is invisible without a token
        HfApi(endpoint=hub.url, token=False).dataset_info(REPO)


def test_required_token_revisions_and_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer(require_token=TOKEN) as hub:
        point_clients_at(hub, tmp_path / "hf_home", monkeypatch)
        with pytest.raises(HfHubHTTPError) as denied:
            HfApi(endpoint=hub.url, token="hf_wrong").create_repo(REPO, repo_type="dataset")
        assert denied.value.response.status_code == 401
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo(REPO)  # a model repo: no URL prefix
        api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=REPO)
        api.create_branch(REPO, branch="dev")
        with pytest.raises(RevisionNotFoundError):
            api.model_info(REPO, revision="refs/convert/parquet")
        assert api.model_info(REPO, revision="dev").sha == api.model_info(REPO).sha

        url = f"{hub.url}/{REPO}/resolve/main/digits.txt"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(headers=auth) as client:
            head = client.head(url)
            assert head.status_code == 200 and head.headers["Content-Length"] == "10" and head.headers["ETag"]
            assert head.headers["X-Repo-Commit"] == api.model_info(REPO).sha
            assert client.get(url, headers={"Range": "bytes=-3"}).content == b"789"
            partial = client.get(url, headers={"Range": "bytes=2-4"})
            assert (partial.status_code, partial.content, partial.headers["Content-Range"]) == (
                206,
                b"234",
                "bytes 2-4/10",
            )
            assert client.get(url, headers={"Range": "bytes=10-"}).status_code == 416
            missing = client.head(f"{hub.url}/{REPO}/resolve/main/nope.txt")
            assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
            assert client.get(f"{hub.url}/{REPO}/resolve/refs%2Fconvert%2Fparquet/digits.txt").status_code == 404
