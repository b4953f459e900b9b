"""The Silkie-vs-base Space end to end: its app.py (with a stub `spaces`) launched on a loopback port, driven by
gradio_client and by a real browser (Playwright + Debian's Chromium); votes into the loopback Hub."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.arena import stub_spaces
from support.hub_server import HubServer, point_clients_at

from vlfeedback_kit.eval.arena import (
    BOARD_HEADERS,
    ArenaConfig,
    Contender,
    LimitError,
    Limits,
    RateLimiter,
    VoteStore,
    board,
    image_sha256,
    names_model,
    read_votes,
    vote_record,
)
from vlfeedback_kit.eval.arena.bench import tiny_silkie
from vlfeedback_kit.serving import GenerationSettings, generate_both, load

APP = Path(__file__).parents[1] / "spaces" / "silkie-vs-base" / "app.py"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "hf_arena_secret_token_do_not_leak"
SILKIE = Contender("Silkie", "org/silkie", "abc")
BASE = Contender("Base", "org/base", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def silkie(tmp_path_factory):
    return tiny_silkie(tmp_path_factory.mktemp("arena-model"))


@dataclass
class Space:
    module: dict
    """The globals of app.py (``demo``, ``store``, ``config``)."""
    url: str
    votes: Path
    stub: Any
    """The stub ``spaces`` module app.py imported."""
    hub: HubServer


@pytest.fixture(scope="module")
def space(silkie, tmp_path_factory):
    """spaces/silkie-vs-base/app.py run as the Space runs it — a stub `spaces` whose GPU records its calls, the
    votes repo on a loopback Hub, HF_TOKEN set — and launched on a free loopback port."""
    _, run = silkie
    root = tmp_path_factory.mktemp("arena-space")
    env = {"ARENA_ADAPTER": str(run), "ARENA_VOTES_DIR": str(root / "votes"), "ARENA_MAX_NEW_TOKENS": "16",
           "ARENA_VOTES_REPO": "org/space-votes", "ARENA_VOTER_SECRET": "test-secret", "HF_TOKEN": SECRET,
           "ARENA_BATTLES_PER_MINUTE": "1000",  # many calls from one loopback client
           "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
    with HubServer() as hub, pytest.MonkeyPatch.context() as patch:
        point_clients_at(hub, root / "hf_home", patch)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.syspath_prepend(str(stub_spaces(root / "stub")))
        patch.delitem(sys.modules, "spaces", raising=False)
        module = runpy.run_path(str(APP), run_name="space_app")
        stub = sys.modules.pop("spaces")
        demo = module["demo"]
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            yield Space(module, demo.local_url, root / "votes", stub, hub)
        finally:
            demo.close()
            module["store"].close()


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(path)
    return path


def test_app_applies_the_zerogpu_decorator_to_a_sync_generator(space):
    assert space.stub.decorated == [{"name": "generate_pair", "duration": 60, "generator": True}]


def test_compare_returns_both_answers_from_one_batched_generate(space, silkie, png):
    from gradio_client import Client, handle_file

    client = Client(space.url, verbose=False)
    assert {"/compare", "/leaderboard"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    answer_silkie, answer_base = client.predict(handle_file(str(png)), "What colour is it?", api_name="/compare")
    served = load(None, adapter=str(silkie[1]))
    expected = generate_both(served, [(Image.open(png).convert("RGB"), "What colour is it?")],
                             GenerationSettings(max_new_tokens=16))  # fmt: skip
    assert (answer_silkie, answer_base) == (expected[0][0], expected[1][0])
    assert answer_silkie != answer_base and "generate_pair" in space.stub.called


def test_compare_limits_are_messages_not_tracebacks(space, png):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(space.url, verbose=False)
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, "no image", api_name="/compare")
    with pytest.raises(AppError, match="characters long; the limit is 2000"):
        client.predict(handle_file(str(png)), "x" * 2001, api_name="/compare")
    assert client.predict(handle_file(str(png)), "still serving?", api_name="/compare")  # the queue is alive


def test_eight_concurrent_compare_calls_all_succeed(space, png):
    from gradio_client import Client, handle_file

    client = Client(space.url, verbose=False)
    jobs = [client.submit(handle_file(str(png)), f"question {i}", api_name="/compare") for i in range(8)]
    results = [job.result(timeout=120) for job in jobs]
    assert len(results) == 8 and all(len(pair) == 2 and all(isinstance(a, str) for a in pair) for pair in results)


def test_token_never_reaches_the_page(space):
    import urllib.request

    url = space.url
    for path in ("", "config", "gradio_api/info"):
        with urllib.request.urlopen(url + path, timeout=10) as response:
            assert SECRET not in response.read().decode("utf-8", "replace")


def test_limits_and_rate_limiter(tmp_path):
    limits = Limits(max_image_bytes=200, max_image_pixels=100, max_prompt_chars=10)
    small, wide, noisy, text = (tmp_path / n for n in ("small.png", "wide.png", "noisy.bmp", "text.png"))
    Image.new("L", (10, 10)).save(small)
    Image.new("L", (11, 10)).save(wide)
    Image.new("RGB", (10, 10)).save(noisy)  # 10×10 pixels, but 374 bytes as BMP
    text.write_text("not an image")
    image, question = limits.prompt(small, "  what?  ")
    assert question == "what?" and image.mode == "RGB" and image.size == (10, 10)
    for path, question, message in [(None, "what?", "Upload an image first"), (small, "   ", "Type a question"),
                                    (small, "x" * 11, "11 characters long"), (wide, "what?", "11×10 pixels"),
                                    (noisy, "what?", "MiB"), (text, "what?", "not an image")]:  # fmt: skip
        with pytest.raises(LimitError, match=message):
            limits.prompt(path, question)
    now = [0.0]
    rate = RateLimiter(2, clock=lambda: now[0])
    rate.hit("voter", "votes")
    rate.hit("voter", "votes")
    rate.hit("other", "votes")
    with pytest.raises(LimitError, match="Slow down: at most 2 votes a minute"):
        rate.hit("voter", "votes")
    now[0] = 60.0
    rate.hit("voter", "votes")


def record(vote: str, i: int = 0, a: Contender = SILKIE, b: Contender = BASE, answer_a: str = "red") -> dict:
    return vote_record(battle_id=f"b{i}", mode="battle", model_a=a, model_b=b, vote=vote, voter="v1",
                       prompt="colour?", answer_a=answer_a, answer_b="blue", settings=GenerationSettings(),
                       image_sha256="0" * 64, now=1.0)  # fmt: skip


def test_board_hides_ratings_below_the_minimum_and_drops_identity_leaks():
    named = {**record("b", 3), "mode": "side_by_side"}  # not blind: kept, not rated
    votes = [record("a", 0), record("tie", 1, BASE, SILKIE), record("b", 2, answer_a="I am Qwen, by Alibaba"), named]
    assert names_model("I am Qwen.") and not names_model("a queen")
    small = board(votes, SILKIE, BASE, min_votes=20)
    assert small.summary.n == 2 and small.excluded == 1 and "hidden" in small.note and "named its model" in small.note
    assert small.rows[0][1:7] == [2, 1, 1, 0, 0, "50.0%"] and small.rows[0][7] == "hidden"
    many = board([record("a", i) for i in range(15)] + [record("b", i, BASE, SILKIE) for i in range(5)],
                 SILKIE, BASE, min_votes=20, rounds=200)  # fmt: skip
    assert many.summary.win_rate == 1.0 and many.rows[0][7] == "100.0%"
    assert many.rows[0][11] == "100.0%"  # answers alike in style: nothing to control, LC is the plain fit
    assert "not controlled for tokens, headers, list_items, bold: no battle's answers differ in it" in many.note
    assert small.rows[0][11:] == ["hidden"] * 3


def test_board_shows_a_length_controlled_win_rate_beside_the_raw_one():
    """Voters who favour the longer answer (:func:`length_biased`) make Silkie's longer answers "win"; controlled for
    length and Markdown the win rate is about even. Votes without both answers (older data) get no such column."""
    from support.length_bias import length_biased

    votes = []
    for i, (silkie_tokens, base_tokens, outcome) in enumerate(length_biased(200, length_effect=4.0, strength=0.0)):
        silkie = ("**Note:** " if i % 3 == 0 else "") + "word " * silkie_tokens
        base = ("**Note:** " if i % 5 == 0 else "") + "word " * base_tokens
        silkie_is_a = i % 2 == 0
        a, b, answer_a, answer_b = (SILKIE, BASE, silkie, base) if silkie_is_a else (BASE, SILKIE, base, silkie)
        vote = "tie" if outcome == "tie" else ("a" if (outcome == "win") == silkie_is_a else "b")
        votes.append({**record(vote, i, a, b, answer_a=answer_a), "answer_b": answer_b})
    result = board(votes, SILKIE, BASE, rounds=200)
    raw = result.summary.win_rate
    controlled = result.summary.length_controlled
    assert raw > 0.6 and controlled.win_rate < raw - 0.1
    assert controlled.win_rate_ci[0] < 0.5 < controlled.win_rate_ci[1]
    assert controlled.style_coefficients["bold"] is not None
    assert result.rows[0][7] == f"{raw:.1%}" and result.rows[0][11] == f"{controlled.win_rate:.1%}"
    assert result.rows[0][13] == f"{controlled.elo_gap:+.0f}" and len(result.rows[0]) == len(BOARD_HEADERS)
    assert "read at equal style" in result.note
    old = board([{k: v for k, v in vote.items() if k != "answer_b"} for vote in votes], SILKIE, BASE, rounds=200)
    assert old.rows[0][7] == result.rows[0][7] and old.rows[0][11:] == ["—"] * 3
    assert "some votes lack the answers" in old.note


def load_fresh(repo_id: str, hub: HubServer) -> Any:
    """load_dataset from ``hub``: datasets read HF_ENDPOINT once at import, and fsspec caches HfFileSystem
    instances with their endpoint, so both are pointed at this test's Hub."""
    import datasets
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
        patch.setattr(datasets.config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        return datasets.load_dataset(repo_id, split="train")


def test_votes_reach_the_dataset_repo_and_load_dataset_reads_them(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)  # pushing needs a write token (without one the votes stay local)
    store = VoteStore(tmp_path / "votes", "org/arena-votes", every_minutes=60)
    try:
        store.add(record("a", 0), b"png-bytes")
        store.add(record("bothbad", 1), b"png-bytes")
        store.push()
        repo = hub.repo("org/arena-votes")
        assert repo.private  # votes hold visitors' prompts and images: private unless public_votes
        names = set(repo.resolve("main").files)
        assert f"data/{store.path.name}" in names and f"images/{'0' * 64}.png" in names
        rows = load_fresh("org/arena-votes", hub)
        assert rows["winner"] == ["model_a", "tie (bothbad)"] and rows["model_a"] == ["org/silkie@abc"] * 2
        assert [v["battle_id"] for v in read_votes("org/arena-votes")] == ["b0", "b1"]
        assert "base64" not in store.path.read_text() and "ip" not in rows.column_names
    finally:
        store.close()


def test_a_failing_hub_loses_and_duplicates_no_vote(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    store = VoteStore(tmp_path / "votes", "org/arena-votes", every_minutes=60)
    try:
        store.add(record("a", 0))
        store.push()
        store.add(record("b", 1))
        hub.fail_next(r"/commit/", status=503)
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a 5xx commit
            store.push()
        store.add(record("tie", 2))
        store.push()  # the next tick: everything still on disk goes up
        pushed = hub.repo("org/arena-votes").read(f"data/{store.path.name}").decode().splitlines()
        assert [json.loads(line)["battle_id"] for line in pushed] == ["b0", "b1", "b2"]
    finally:
        store.close()


def test_a_hub_down_at_start_up_keeps_votes_local_then_catches_up(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub.fail_next(r"/api/repos/create", status=503)
    store = VoteStore(tmp_path / "votes", "org/late-votes", every_minutes=60, retry_seconds=0)
    try:
        assert store.scheduler is None  # the app still starts; the vote below is kept on disk
        store.add(record("a", 0))
        assert store.scheduler is not None  # the next vote reconnected
        store.add(record("b", 1))
        store.push()
        pushed = hub.repo("org/late-votes").read(f"data/{store.path.name}").decode().splitlines()
        assert [json.loads(line)["battle_id"] for line in pushed] == ["b0", "b1"]
    finally:
        store.close()
    restarted = VoteStore(tmp_path / "votes-2", "org/late-votes", every_minutes=60)  # a new process, empty folder
    try:
        assert [v["battle_id"] for v in restarted.votes()] == ["b0", "b1"]  # the board survives the restart
    finally:
        restarted.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    store = VoteStore(tmp_path / "votes")
    store.add(record("a", 0))
    with store.path.open("a") as handle:
        handle.write('{"battle_id": "b1", "win')  # kill -9 mid-write
    assert [v["battle_id"] for v in read_votes(tmp_path / "votes")] == ["b0"]


def test_config_from_environment():
    config = ArenaConfig.from_env({"ARENA_MODEL": "org/base", "ARENA_MAX_NEW_TOKENS": "64", "HF_TOKEN": SECRET,
                                   "ARENA_PUSH_EVERY_MINUTES": "2.5"})  # fmt: skip
    assert config.model == "org/base" and config.max_new_tokens == 64 and SECRET not in repr(config)
    assert config.push_every_minutes == 2.5
    assert config.settings(10_000, -1).max_new_tokens == config.max_new_tokens_limit


def test_browser_battle_vote_reveal_and_leaderboard(space, png, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    from playwright.sync_api import expect, sync_playwright

    url, votes = space.url, space.votes
    artifacts = Path(os.environ.get("ARENA_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        expect(page.locator("#privacy")).to_contain_text("your question, your uploaded image")  # before any vote
        expect(page.locator("#privacy")).to_contain_text("private Hub dataset org/space-votes")
        page.locator("#image input[type=file]").set_input_files(str(png))
        page.locator("#image img").first.wait_for()
        page.locator("#question textarea").fill("What colour is the square?")
        expect(page.locator("#vote_a")).to_be_disabled()
        page.locator("#send").click()
        for pane in ("#chat_a", "#chat_b"):
            expect(page.locator(pane)).to_contain_text("What colour is the square?", timeout=20_000)
        expect(page.locator("#vote_a")).to_be_enabled(timeout=60_000)
        answers = [page.locator(f"{pane} .message.bot").last.inner_text() for pane in ("#chat_a", "#chat_b")]
        assert all(a.strip() for a in answers)
        expect(page.locator("#reveal")).not_to_contain_text("Model A:")
        page.locator("#vote_a").click()
        expect(page.locator("#reveal")).to_contain_text("Model A:", timeout=10_000)
        expect(page.locator("#reveal")).to_contain_text("Silkie")
        expect(page.locator("#vote_b")).to_be_disabled()
        page.screenshot(path=str(artifacts / "space-battle.png"), full_page=True)
        voter = page.evaluate("() => localStorage.getItem('vlf_arena_voter')")
        page.get_by_role("tab", name="🏆 Leaderboard").click()
        expect(page.locator("#board_note")).to_contain_text("1 battle so far", timeout=10_000)
        expect(page.locator("#board")).to_contain_text("Silkie")
        expect(page.locator("#board")).to_contain_text("LC win rate")  # raw and length-controlled, side by side
        page.screenshot(path=str(artifacts / "space-leaderboard.png"), full_page=True)
        page.get_by_role("tab", name="👀 Side by side (named)").click()
        expect(page.locator("#named_vote_a")).to_have_text("👈 Silkie is better")
        expect(page.locator("#named_vote_bothbad")).to_have_text("👎 Both are bad")
        page.locator("#named_image input[type=file]").set_input_files(str(png))
        page.locator("#named_image img").first.wait_for()
        page.locator("#named_question textarea").fill("Which colour, named?")
        page.locator("#named_send").click()
        expect(page.locator("#named_vote_a")).to_be_enabled(timeout=60_000)
        page.locator("#named_vote_a").click()
        expect(page.locator("#named_reveal")).to_contain_text("your vote is recorded", timeout=10_000)
        page.get_by_role("tab", name="🏆 Leaderboard").click()
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator("#board_note")).to_contain_text("1 battle so far")  # named votes are not rated
        browser.close()
    assert voter and SECRET not in voter
    (named,) = [v for v in read_votes(votes) if v["mode"] == "side_by_side"]
    assert (named["model_a_name"], named["winner"], named["prompt"]) == ("Silkie", "model_a", "Which colour, named?")
    (line,) = [v for v in read_votes(votes) if v["mode"] == "battle"]
    assert line["winner"] == "model_a" and line["prompt"] == "What colour is the square?"
    assert len(line["voter"]) == 32 and (votes / "images" / f"{line['image_sha256']}.png").is_file()
    assert line["voter_id_survives_restart"] is True  # ARENA_VOTER_SECRET is set
    assert {line["model_a_name"], line["model_b_name"]} == {"Silkie", "Base"}
    text = "".join(p.read_text() for p in (votes / "data").glob("*.jsonl"))
    assert SECRET not in text and "127.0.0.1" not in text and "base64" not in text
    assert (artifacts / "space-battle.png").stat().st_size > 10_000
    # the scheduler's next tick puts the vote (and its image, once) in the dataset repo; datasets reads it back
    space.module["store"].push()
    pushed = space.hub.repo("org/space-votes").resolve("main").files
    assert f"images/{line['image_sha256']}.png" in pushed
    rows = load_fresh("org/space-votes", space.hub)
    assert set(rows["battle_id"]) == {line["battle_id"], named["battle_id"]}
    assert SECRET in space.hub.tokens and space.hub.leaks(SECRET) == []  # the token only ever in Authorization
    assert SECRET not in caplog.text


def test_both_rows_stream_together_and_end_as_the_batched_answers(silkie):
    from vlfeedback_kit.eval.arena.streaming import stream_pair
    from vlfeedback_kit.serving import BASE as BASE_ROW
    from vlfeedback_kit.serving import SILKIE as SILKIE_ROW

    served = load(None, adapter=str(silkie[1]))
    image, settings = Image.new("RGB", (96, 64), (200, 30, 30)), GenerationSettings(max_new_tokens=12)
    steps = list(stream_pair(served, image, "What colour?", [BASE_ROW, SILKIE_ROW], settings))
    assert len(steps) == 12  # one update per generated token, carrying both rows
    assert sum(bool(a) and bool(b) for a, b in steps) > 6
    silkie_answer, base_answer = generate_both(served, [(image, "What colour?")], settings)
    assert steps[-1] == (base_answer[0], silkie_answer[0])


def publish(*argv: str) -> int:
    from vlfeedback_kit.cli import main

    return main(["publish", "space", "--repo", "org/silkie-arena", *argv])


def test_publish_space_dry_run_tree_starts_from_itself_alone(silkie, tmp_path, png):
    import subprocess
    import zipfile

    import yaml
    from gradio_client import handle_file

    base, run = silkie
    out = tmp_path / "tree"
    assert publish("--model", str(base), "--adapter", str(run), "--votes-repo", "org/votes", "--hardware",
                   "zero-a10g", "--dry-run", str(out)) == 0  # fmt: skip
    header = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == "6.31.0" and header["app_file"] == "app.py"
    assert header["models"] == [str(base), str(run)] and "org/votes" in header["datasets"]
    assert header["suggested_hardware"] == "zero-a10g" and len(header["short_description"]) <= 60
    (wheel,) = (out / "wheels").glob("vlfeedback_kit-*.whl")
    assert f"./wheels/{wheel.name}" in (out / "requirements.txt").read_text().splitlines()
    site = tmp_path / "site"  # what pip does with the wheel the requirements name
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "ARENA_ADAPTER": str(run), "ARENA_VOTES_DIR": str(tmp_path / "v"),
           "ARENA_MAX_NEW_TOKENS": "8", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(free_port()),
           "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
    found = subprocess.run([sys.executable, "-c", "import vlfeedback_kit; print(vlfeedback_kit.__file__)"], cwd=out,
                           env=env, capture_output=True, text=True)  # fmt: skip
    assert found.stdout.strip() == str(site / "vlfeedback_kit" / "__init__.py")
    log = tmp_path / "app.log"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        client = wait_for(f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/", server, log)
        answers = client.predict(handle_file(str(png)), "What colour?", api_name="/compare")
        assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for(url: str, server, log: Path, timeout: float = 120.0):
    """A gradio_client once the app answers (bounded polling for readiness, not a timing assumption)."""
    import time
    import urllib.request

    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            urllib.request.urlopen(url + "config", timeout=2).close()
            return Client(url, verbose=False)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Space did not start within {timeout:.0f} s")


def test_publish_space_is_one_commit_to_a_gradio_space(hub, silkie, capsys, monkeypatch):
    base, run = silkie
    monkeypatch.setenv("HF_TOKEN", SECRET)  # the publisher's token (it also creates the private votes repo)
    assert publish("--model", "org/base", "--adapter", "org/silkie", "--votes-repo", "org/votes") == 0
    repo = hub.repo("org/silkie-arena", "space")
    head = repo.resolve("main")
    assert len(repo.history(head)) == 2  # the repo's initial commit, then the Space in one commit
    assert {"app.py", "README.md", "requirements.txt"} <= set(head.files)
    assert any(name.startswith("wheels/vlfeedback_kit-") for name in head.files)
    assert capsys.readouterr().out.strip().endswith(f"{hub.url}/spaces/org/silkie-arena")


def test_agreement_reads_the_votes_as_human_labels(tmp_path, capsys):
    from vlfeedback_kit.builders.features import ASPECTS
    from vlfeedback_kit.cli import main

    store = VoteStore(tmp_path / "votes")
    sha, data = image_sha256(Image.new("RGB", (8, 8), "red"))
    for i, vote in enumerate(["a", "b", "tie", "a"]):
        store.add({**record(vote, i), "image_sha256": sha}, data)
    store.add({**record("b", 9, answer_a="As Qwen I think"), "image_sha256": sha}, data)  # left out: names a model
    assert main(["space-votes", str(tmp_path / "votes"), "--out", str(tmp_path / "items")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "items" / "responses.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["b0", "b1", "b2", "b3"] and (tmp_path / "items/merged_images/b0.jpg").is_file()
    judged = tmp_path / "annotated.jsonl"  # the judge prefers Silkie's answer everywhere
    with judged.open("w") as handle:
        for row in rows:
            ratings = {row["models"][0]: 5, row["models"][1]: 2}
            completions = [{"model": m, "annotations": {a: {"Rating": str(r)} for a in ASPECTS}}
                           for m, r in ratings.items()]  # fmt: skip
            handle.write(json.dumps({"id": row["id"], "completions": completions}) + "\n")
    capsys.readouterr()
    assert main(["agreement", "--judge", str(judged), "--human", str(tmp_path / "votes"), "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert (overall["pairs"], overall["agree"], overall["human_ties"], overall["unmatched"]) == (3, 2, 1, 0)


def test_vlfeedback_space_serves_the_arena_on_the_cpu(silkie, tmp_path, png, monkeypatch):
    import gradio as gr
    from gradio_client import Client, handle_file

    from vlfeedback_kit.cli import main
    from vlfeedback_kit.eval.arena import ui as arena_ui

    for name in [name for name in os.environ if name.startswith("ARENA_")]:  # the module's Space sets some
        monkeypatch.delenv(name)
    launched = []
    create_app = arena_ui.create_app
    monkeypatch.setattr(arena_ui, "create_app", lambda *a, **k: launched.append(create_app(*a, **k)) or launched[0])
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # return from launch() with the server up
    port = free_port()
    assert main(["space", "--adapter", str(silkie[1]), "--votes-dir", str(tmp_path / "votes"), "--max-new-tokens",
                 "4", "--port", str(port)]) == 0  # fmt: skip
    demo, store = launched[0]
    try:
        assert store.repo_id is None and store.folder == tmp_path / "votes"  # no repo: the votes stay local
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert len(client.predict(handle_file(str(png)), "What colour?", api_name="/compare")) == 2
    finally:
        demo.close()


def test_examples_come_from_the_held_out_split(tmp_path):
    from release_factory import row, write_release

    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.cards.dataset import write_dataset_card
    from vlfeedback_kit.eval.arena.ui import examples_from

    rows = [row(f"svit-{i}", [(5, 5, 5), (1, 1, 1)], prompt=f"What is in picture {i}?") for i in range(40)]
    out = tmp_path / "vlfeedback"
    build(BuildOptions(source=str(write_release(tmp_path / "rel", rows)), out_dir=out, progress=False,
                       eval_fraction=0.2, eval_seed=42, card=write_dataset_card))  # fmt: skip
    examples = examples_from(out, limit=3)
    assert len(examples) == 3
    for image, question in examples:
        assert Path(image).is_file() and re.fullmatch(r"What is in picture \d+\?", question)
    assert examples_from(None) == [] and examples_from(tmp_path / "missing") == []


OLD_ARENA_NAMES = (
    "VOTES", "IDENTITY_WORDS", "VOTER_STORAGE_KEY", "ArenaConfig", "Contender", "contenders", "PairStreamer",
    "stream_pair", "LimitError", "Limits", "RateLimiter", "client_address", "VisitorLimiter", "names_model",
    "image_sha256", "kit_version", "vote_record", "DATASET_README", "token_available", "VoteStore",
    "privacy_notice", "read_votes", "Board", "BOARD_HEADERS", "board", "HUMAN_PREFERENCE", "is_votes_source",
    "vote_labels", "votes_to_items",
)  # fmt: skip
"""The public names eval/arena.py defined before the arena became a package."""


def test_the_arena_is_one_package_and_the_old_module_paths_work_one_more_release():
    """``from vlfeedback_kit.eval.arena import X`` still gives every name the old module defined; the moved modules'
    old names are the new modules themselves, each saying it is deprecated; the old benchmark command still runs."""
    import importlib
    import subprocess

    import vlfeedback_kit.eval.arena as arena

    assert [name for name in OLD_ARENA_NAMES if not hasattr(arena, name)] == []
    assert arena.read_votes is importlib.import_module("vlfeedback_kit.eval.arena.votes").read_votes
    moved = {"vlfeedback_kit.eval.arena_ui": "vlfeedback_kit.eval.arena.ui",
             "vlfeedback_kit.eval.arena_commands": "vlfeedback_kit.eval.arena.commands",
             "vlfeedback_kit.eval.arena_bench": "vlfeedback_kit.eval.arena.bench",
             "vlfeedback_kit.cards.space": "vlfeedback_kit.eval.arena.publish"}  # fmt: skip
    root = Path(__file__).parents[1]
    for old, new in moved.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        shim = root / old.removeprefix("vlfeedback_kit.").replace(".", "/")
        assert shim.with_suffix(".py").read_text().startswith('"""Deprecated: '), old
    for module in ("vlfeedback_kit.eval.arena_bench", "vlfeedback_kit.eval.arena.bench"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "--concurrent" in done.stdout, done.stderr[-500:]
