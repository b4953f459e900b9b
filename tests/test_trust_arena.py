"""The arena does not expose its visitors (issue 19 §4) and a votes folder cannot lead the kit outside it (§1).

Votes hold each visitor's prompt and image: the votes repo is private unless asked otherwise, nothing is pushed
without a token or into a public repo, and the page says which before the first vote; the voter key is never a
constant; rates are counted per session and per (hashed, unstored) address, for the page and ``/compare`` alike;
``votes_to_items`` reads and writes only inside its folders.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from support.hub_server import dataset_repo

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.arena import (
    ArenaConfig,
    Contender,
    VoteStore,
    client_address,
    image_sha256,
    privacy_notice,
    read_votes,
    vote_record,
    votes_to_items,
)
from vlfeedback_kit.serving import GenerationSettings

TOKEN = "hf_publisher_token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vlfeedback_kit.eval.arena.bench import tiny_silkie
    from vlfeedback_kit.serving import load

    _, run = tiny_silkie(tmp_path_factory.mktemp("arena-model"))
    return load(None, adapter=str(run))


@pytest.fixture(scope="module")
def arena(served, tmp_path_factory):
    """The arena app with 3 battles a minute per session, 2 sessions' worth per address, and a frozen clock (no
    request ever leaves the window: the counts below do not depend on how fast the machine is)."""
    from vlfeedback_kit.eval.arena.ui import build_app

    config = ArenaConfig(max_new_tokens=2, battles_per_minute=3, clients_per_address=2)
    store = VoteStore(tmp_path_factory.mktemp("arena-votes"))
    demo = build_app(served, config, store, clock=lambda: 0.0)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(demo=demo, url=demo.local_url, store=store)
    finally:
        demo.close()


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def compare_from(url: str, address: str, png: Path, calls: int) -> list[str]:
    """``calls`` quick ``/compare`` calls from one client (one gradio session) at ``address``: "ok" or the error."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(url, verbose=False, headers={"X-Forwarded-For": address})  # loopback: uvicorn trusts it
    jobs = [client.submit(handle_file(str(png)), f"question {i}", api_name="/compare") for i in range(calls)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=120)
            outcomes.append("ok")
        except AppError as err:
            outcomes.append(str(err))
    return outcomes


def test_compare_calls_are_rate_limited_per_session_and_per_address(arena, png):
    first = compare_from(arena.url, "198.51.100.1", png, 20)
    assert first.count("ok") == 3  # the page's limit: 3 battles a minute per session
    refused = [o for o in first if o != "ok"]
    assert len(refused) == 17 and all(o.startswith("Slow down: at most 3 battles or /compare calls a minute")
                                      for o in refused)  # fmt: skip
    assert compare_from(arena.url, "198.51.100.2", png, 1) == ["ok"]  # another client is not affected
    # a new session from the first address gets its own 3 until the address has had 2 sessions' worth (6)
    second = compare_from(arena.url, "198.51.100.1", png, 4)
    assert second.count("ok") == 3 and "Slow down: at most 6 battles" in "".join(second)  # the address: 6
    assert compare_from(arena.url, "198.51.100.1", png, 1)[0].startswith("Slow down: at most 6 battles")


def test_the_client_address_is_the_one_the_trusted_proxy_saw():
    request = SimpleNamespace(headers={"x-forwarded-for": "6.6.6.6, 203.0.113.9"},
                              client=SimpleNamespace(host="10.1.1.1"))  # fmt: skip
    assert client_address(request, proxy_hops=1) == "203.0.113.9"  # the client's own X-Forwarded-For is ignored
    assert client_address(request, proxy_hops=0) == "10.1.1.1"
    assert ArenaConfig.from_env({"SPACE_ID": "org/arena"}).proxy_hops == 1
    assert ArenaConfig.from_env({}).proxy_hops == 0 and ArenaConfig.from_env({"ARENA_PROXY_HOPS": "2"}).proxy_hops == 2


def test_the_page_says_what_a_vote_stores_and_where_before_the_first_vote(arena):
    with urllib.request.urlopen(arena.url + "config", timeout=10) as response:
        page = response.read().decode()
    for words in ("What a vote stores", "your question, your uploaded image, both answers and your vote",
                  "lost when it restarts", "no votes dataset is configured", "never stored"):  # fmt: skip
        assert words in page


def vote_through_the_page(demo, host: str) -> None:
    """Cast one blind vote as the page's "A is better" button does, from a visitor at ``host``."""
    from vlfeedback_kit.serving import BASE, SILKIE

    cast = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "cast")
    state = {"battle_id": "b0", "mode": "battle", "adapters": [SILKIE, BASE], "done": True, "voted": False,
             "image": Image.new("RGB", (8, 8), "red"), "question": "colour?", "answers": ["red", "blue"],
             "settings": GenerationSettings().to_dict()}  # fmt: skip
    request = SimpleNamespace(headers={}, client=SimpleNamespace(host=host), session_hash="session-1")
    cast(state, "voter-1", request)


def test_without_a_voter_secret_each_start_makes_its_own_key_and_votes_say_ids_do_not_survive(
    served, tmp_path, caplog
):
    import gradio as gr

    from vlfeedback_kit.eval.arena.ui import build_app

    assert ArenaConfig().voter_secret is None and ArenaConfig.from_env({}).voter_secret is None
    keys = []
    with caplog.at_level(logging.WARNING):
        for i in range(2):
            demo = build_app(served, ArenaConfig(), VoteStore(tmp_path / f"votes-{i}"))
            (state,) = [b for b in demo.blocks.values() if isinstance(b, gr.BrowserState)]
            keys.append(state.secret)
    assert keys[0] != keys[1] and "vlfeedback-arena-local" not in keys and all(len(k) >= 32 for k in keys)
    assert "ARENA_VOTER_SECRET is not set" in caplog.text
    vote_through_the_page(demo, "203.0.113.7")
    (vote,) = read_votes(tmp_path / "votes-1")
    assert vote["voter_id_survives_restart"] is False
    stored = "".join(p.read_text() for p in (tmp_path / "votes-1").rglob("*.jsonl"))
    assert "203.0.113.7" not in stored and "session-1" not in stored  # neither the address nor the session
    fixed = build_app(served, ArenaConfig(voter_secret="from-a-space-secret"), VoteStore(tmp_path / "votes-2"))
    (state,) = [b for b in fixed.blocks.values() if isinstance(b, gr.BrowserState)]
    vote_through_the_page(fixed, "203.0.113.7")
    assert state.secret == "from-a-space-secret" and read_votes(tmp_path / "votes-2")[0]["voter_id_survives_restart"]


def record(battle_id: str = "b0", sha: str = "0" * 64) -> dict:
    silkie, base = Contender("Silkie", "org/silkie", None), Contender("Base", "org/base", None)
    return vote_record(battle_id=battle_id, mode="battle", model_a=silkie, model_b=base, vote="a", voter="v",
                       prompt="colour?", answer_a="red", answer_b="blue", settings=GenerationSettings(),
                       image_sha256=sha, now=1.0)  # fmt: skip


def test_the_votes_repo_is_created_private_unless_public_votes(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    private = VoteStore(tmp_path / "a", "org/private-votes", every_minutes=60)
    public = VoteStore(tmp_path / "b", "org/public-votes", every_minutes=60, public=True)
    try:
        assert hub.repo("org/private-votes").private and not hub.repo("org/public-votes").private
        assert "**private** Hub dataset `org/private-votes`" in private.where()
        assert "**public** Hub dataset `org/public-votes`: **anyone can read" in public.where()
        assert ArenaConfig.from_env({"ARENA_PUBLIC_VOTES": "1"}).public_votes
        assert not ArenaConfig.from_env({"ARENA_PUBLIC_VOTES": "0"}).public_votes and not ArenaConfig().public_votes
    finally:
        private.close()
        public.close()


def test_votes_are_never_pushed_into_a_public_repo_unless_public_votes(hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dataset_repo(hub, "org/open-votes", {}, token=TOKEN)  # someone made it public
    with caplog.at_level(logging.WARNING):
        store = VoteStore(tmp_path / "votes", "org/open-votes", every_minutes=60)
    store.add(record(), b"png")
    store.push()
    assert store.scheduler is None and len(hub.repo("org/open-votes").history(hub.repo("org/open-votes").resolve(
        "main"))) == 1  # fmt: skip
    assert "is public and ARENA_PUBLIC_VOTES is not set" in store.where() and "lost when it restarts" in caplog.text


def test_without_a_token_votes_stay_on_disk_and_the_page_and_the_log_say_they_are_lost_at_restart(
    hub, tmp_path, caplog
):
    assert "HF_TOKEN" not in os.environ
    with caplog.at_level(logging.WARNING):
        store = VoteStore(tmp_path / "votes", "org/votes", every_minutes=60)
    store.add(record(), b"png")
    assert store.scheduler is None and ("dataset", "org/votes") not in hub.repos
    assert "lost when it restarts" in caplog.text and "HF_TOKEN" in caplog.text
    notice = privacy_notice(store, True, ArenaConfig())
    assert "**lost when it restarts**" in notice and "no write token (the Space secret HF_TOKEN)" in notice
    assert "your question, your uploaded image, both answers and your vote" in notice


def votes_folder(root: Path, votes: list[dict], images: dict[str, bytes]) -> Path:
    folder = root / "votes"
    (folder / "data").mkdir(parents=True)
    (folder / "images").mkdir()
    (folder / "data" / "votes-1.jsonl").write_text("".join(json.dumps(v) + "\n" for v in votes))
    for sha, data in images.items():
        (folder / "images" / f"{sha}.png").write_bytes(data)
    return folder


@pytest.fixture
def reads(monkeypatch):
    """Every file the code under test reads through pathlib (resolved)."""
    seen: list[Path] = []
    for name in ("read_bytes", "read_text"):
        original = getattr(pathlib.Path, name)

        def spy(self, *args, _original=original, **kwargs):
            seen.append(self.resolve())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, name, spy)
    return seen


@pytest.mark.parametrize("case", ["battle_id ../", "battle_id absolute", "sha ../", "sha absolute", "image symlink",
                                  "images dir symlink", "votes file symlink", "output symlink"])  # fmt: skip
def test_a_crafted_votes_folder_reads_and_writes_nothing_outside(tmp_path, reads, case):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    (outside / "victim.jpg").write_bytes(b"keep me")
    (outside / "votes.jsonl").write_text(json.dumps(record("b9")) + "\n")
    sha, data = image_sha256(Image.new("RGB", (4, 4), "red"))
    good = record("b0", sha)
    bad = {"battle_id ../": record("../../outside/x", sha), "battle_id absolute": record(str(outside / "x"), sha),
           "sha ../": record("b1", "../../outside/secret"), "sha absolute": record("b1", str(outside / "secret")),
           }.get(case, record("b1", "1" * 64))  # fmt: skip
    folder = votes_folder(root, [good, bad], {sha: data})
    if case == "image symlink":
        (folder / "images" / f"{'1' * 64}.png").symlink_to(outside / "secret.png")
    elif case == "images dir symlink":
        (folder / "images" / f"{sha}.png").rename(outside / f"{sha}.png")
        (folder / "images").rmdir()
        (folder / "images").symlink_to(outside)
    elif case == "votes file symlink":
        (folder / "data" / "votes-2.jsonl").symlink_to(outside / "votes.jsonl")
    elif case == "output symlink":
        (root / "items" / "merged_images").mkdir(parents=True)
        (root / "items" / "merged_images" / "b0.jpg").symlink_to(outside / "victim.jpg")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    reads.clear()
    with pytest.raises(UserError) as raised:
        votes_to_items(folder, root / "items")
    message = str(raised.value)
    if case == "votes file symlink":
        assert "votes-2.jsonl" in message and "outside" in message
    elif case == "output symlink":
        assert "b0" in message
    else:  # the file and line of the bad vote (the first vote when every image is behind a link out)
        line = 1 if case == "images dir symlink" else 2
        assert f"data/votes-1.jsonl line {line}" in message and "\n" not in message
    assert not any(outside in p.parents for p in reads), reads  # nothing outside was read ...
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before  # ... nor written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]
    if case != "output symlink":
        assert not (root / "items").exists()  # every vote is checked before anything is written


def test_space_votes_names_the_bad_row_in_one_line(tmp_path, capsys):
    from vlfeedback_kit.cli import main

    folder = votes_folder(tmp_path, [record("../escape")], {})
    assert main(["space-votes", str(folder), "--out", str(tmp_path / "items")]) == 2
    error = capsys.readouterr().err.strip()
    assert "data/votes-1.jsonl line 1" in error and "battle_id '../escape'" in error and len(error.splitlines()) == 1


def fake_wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / "vlfeedback_kit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    return wheel


def publish(*argv: str) -> int:
    from vlfeedback_kit.cli import main

    return main(["publish", "space", "--repo", "org/arena", "--model", "org/base", "--adapter", "org/silkie", *argv])


def test_publish_space_makes_the_votes_repo_private_and_does_not_claim_votes_are_kept_without_a_token(
    hub, monkeypatch, capsys
):
    from vlfeedback_kit.eval.arena import publish as space

    monkeypatch.setattr(space, "build_wheel", fake_wheel)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert publish("--votes-repo", "org/votes") == 0
    assert hub.repo("org/votes").private
    out = capsys.readouterr().out
    assert "votes: NOT kept yet: the Space has no HF_TOKEN secret" in out and "lost at every restart" in out
    assert f"{hub.url}/spaces/org/arena/settings" in out and "write access to org/votes only" in out
    readme = hub.repo("org/arena", "space").read("README.md").decode()
    assert "**private** dataset `org/votes` **only if this Space has a write token**" in readme
    assert "lost at every restart" in readme


def test_publish_space_refuses_a_public_votes_repo_unless_public_votes(hub, monkeypatch, capsys):
    from vlfeedback_kit.eval.arena import publish as space

    monkeypatch.setattr(space, "build_wheel", fake_wheel)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dataset_repo(hub, "org/open-votes", {}, token=TOKEN)
    assert publish("--votes-repo", "org/open-votes") == 2
    error = capsys.readouterr().err
    assert "--votes-repo org/open-votes is public" in error and "--public-votes" in error
    assert ("space", "org/arena") not in hub.repos  # nothing published


def test_publish_space_with_public_votes_and_a_token_says_where_votes_go(hub, monkeypatch, capsys):
    from huggingface_hub import constants

    from vlfeedback_kit.eval.arena import publish as space

    monkeypatch.setattr(space, "build_wheel", fake_wheel)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    release = space.SpaceRelease("org/arena", "org/base", "org/silkie", "org/votes", public_votes=True,
                                 votes_token="hf_votes_write")  # fmt: skip
    assert "hf_votes_write" not in repr(release) and release.variables()["ARENA_PUBLIC_VOTES"] == "1"
    space.publish_space(release)
    assert not hub.repo("org/votes").private
    (created,) = [json.loads(r.body) for r in hub.calls("/api/repos/create") if b'"space"' in r.body]
    assert {s["key"] for s in created["secrets"]} == {"ARENA_VOTER_SECRET", "HF_TOKEN"}
    assert "votes: pushed to the public dataset org/votes with the Space's HF_TOKEN secret" in capsys.readouterr().out
    assert "only if the Space has the secret HF_TOKEN" in release.votes_note(constants.ENDPOINT, None)


def test_publish_space_flags_make_public_votes_and_set_the_token_secret(hub, monkeypatch, capsys):
    from vlfeedback_kit.eval.arena import publish as space

    monkeypatch.setattr(space, "build_wheel", fake_wheel)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("VOTES_WRITE", raising=False)
    assert publish("--votes-repo", "org/votes", "--votes-token-env", "VOTES_WRITE") == 2
    assert "--votes-token-env VOTES_WRITE: that variable is not set" in capsys.readouterr().err
    monkeypatch.setenv("VOTES_WRITE", "hf_votes_write")
    assert publish("--votes-repo", "org/votes", "--public-votes", "--votes-token-env", "VOTES_WRITE") == 0
    assert not hub.repo("org/votes").private
    (created,) = [json.loads(r.body) for r in hub.calls("/api/repos/create") if b'"space"' in r.body]
    assert {s["key"] for s in created["secrets"]} == {"ARENA_VOTER_SECRET", "HF_TOKEN"}
    out = capsys.readouterr().out
    assert "votes: pushed to the public dataset org/votes" in out and "hf_votes_write" not in out
