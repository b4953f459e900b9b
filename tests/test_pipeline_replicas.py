"""Several base URLs for one endpoint (replicas of one deployment) and ``decode --shard`` merged by ``assemble``.

Run: pytest tests/test_pipeline_replicas.py
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support.openai_server import OpenAIServer
from support.pipeline import JUDGE_KEY_ENV, annotate_args
from test_pipeline_annotate import SECRET, closed_port_url, decoded, output, report
from test_pipeline_decode import instructions

from vlfeedback_kit.builders.pipeline import endpoint
from vlfeedback_kit.builders.pipeline.endpoint import BREAKER_LIMIT, Replicas, RetryPolicy, base_urls, complete
from vlfeedback_kit.builders.pipeline.pool import load_pool
from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError


@pytest.fixture
def replicas(monkeypatch: pytest.MonkeyPatch):
    """Two loopback replicas of one judge deployment, and the API key in its variable."""
    monkeypatch.setenv(JUDGE_KEY_ENV, SECRET)
    with OpenAIServer(latency=0.01) as a, OpenAIServer(latency=0.01) as b:
        yield a, b


def host(server: OpenAIServer) -> str:
    return server.url.removeprefix("http://").removesuffix("/v1")


def paid(*servers: OpenAIServer) -> Counter:
    """Answered chat calls per item content, over every replica."""
    return sum((s.counts_by_hash() for s in servers), Counter())


def test_base_urls_are_a_list_comma_separated_or_one() -> None:
    assert base_urls("http://a/v1") == ("http://a/v1",)
    assert base_urls("http://a/v1, http://b/v1") == ("http://a/v1", "http://b/v1")
    assert base_urls(["http://a/v1,http://b/v1", "http://c/v1"]) == ("http://a/v1", "http://b/v1", "http://c/v1")
    with pytest.raises(UserError, match="--judge-base-url: http://a/v1 is listed more than once"):
        base_urls(["http://a/v1", "http://a/v1"], "--judge-base-url")
    with pytest.raises(UserError, match="--base-url: no base URL given"):
        base_urls(" , ")
    assert endpoint.host_of("http://user:pw@[::1]:8000/v1") == "[::1]:8000"  # as pool.py's _host said it


def test_replica_urls_with_credentials_never_reach_messages_or_files(
    replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, _ = replicas
    dead = closed_port_url().replace("http://", f"http://user:{SECRET}@")
    source, out = decoded(tmp_path / "in", {"svit-0": ("Q", ["x", "y"])}), tmp_path / "out"
    assert cli_main(annotate_args(f"{dead},{a.url}", source, out, "--quiet", "--max-retries", "0")) == 0
    err = capsys.readouterr().err
    assert "connection refused" in err and SECRET not in err and SECRET not in report(out)["endpoint"]
    assert cli_main(annotate_args(f"{dead},{closed_port_url()}", source, tmp_path / "o2", "--quiet")) == 2
    assert SECRET not in capsys.readouterr().err
    for path in out.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_a_replica_killed_mid_run_loses_nothing_and_pays_nothing_twice(
    replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path
) -> None:
    a, b = replicas
    items = {f"svit-{i}": (f"Q{i}", ["x", "y"]) for i in range(40)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    a_url = a.url
    a.kill_after(6)
    args = annotate_args(
        a_url, source, out, "--quiet", "--base-url", b.url, "--concurrency", "2", "--max-retries", "0"
    )
    assert cli_main(args) == 0
    assert a.killed and a.dropped >= 1 and 0 < len(a.calls) < 40  # it answered, then died mid-run
    assert sorted(output(out)) == sorted(items) and report(out)["complete"]
    counts = paid(a, b)
    assert len(counts) == 40 and set(counts.values()) == {1}  # every item answered once, by one replica
    assert report(out)["ledger"]["calls"] == 40
    assert report(out)["endpoint"] == f"{a_url}, {b.url}"
    assert report(out)["run"]["retries"].get("APIConnectionError: sent to another replica", 0) >= 1


def test_requests_spread_over_the_replicas(replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path) -> None:
    a, b = replicas
    items = {f"svit-{i}": (f"Q{i}", ["x", "y"]) for i in range(24)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert cli_main(annotate_args(f"{a.url},{b.url}", source, out, "--quiet", "--concurrency", "3")) == 0
    assert len(a.calls) + len(b.calls) == 24 and len(a.calls) >= 6 and len(b.calls) >= 6


def test_the_run_stops_only_when_every_replica_is_down_naming_each(
    replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = replicas
    items = {f"svit-{i}": (f"Q{i}", ["x", "y"]) for i in range(40)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    hosts = host(a), host(b)
    a.kill_after(3)
    b.kill_after(5)
    args = annotate_args(a.url, source, out, "--quiet", "--base-url", b.url, "--concurrency", "2")
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach any of the 2 replicas of --base-url" in err[0]
    assert f"{hosts[0]}: " in err[0] and f"{hosts[1]}: " in err[0] and "requests in a row" in err[0]
    assert a.dropped + b.dropped <= 2 * (BREAKER_LIMIT + 4)  # not 40 items x 9 tries
    # what was answered before is kept: the re-run (one replica back) pays only for the rest
    answered = paid(a, b)
    with OpenAIServer(latency=0.0) as c:
        assert cli_main(annotate_args(c.url, source, out, "--quiet")) == 0
        assert not set(c.counts_by_hash()) & set(answered)
        assert len(c.counts_by_hash()) + len(answered) == 40


def test_a_replica_down_at_the_start_is_named_and_the_others_carry_the_run(
    replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, _ = replicas
    dead = closed_port_url()
    source, out = decoded(tmp_path / "in", {f"svit-{i}": (f"Q{i}", ["x", "y"]) for i in range(8)}), tmp_path / "out"
    assert cli_main(annotate_args(f"{dead},{a.url}", source, out, "--quiet", "--max-retries", "0")) == 0
    err = capsys.readouterr().err
    assert f"replica {host_of_url(dead)}: connection refused; the run goes on with the others" in err
    assert report(out)["ok"] == 8 and len(a.calls) == 8
    both_dead = f"{dead},{closed_port_url()}"
    assert cli_main(annotate_args(both_dead, source, tmp_path / "out2", "--quiet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].count("connection refused") == 2 and "any of the 2 replicas" in err[0]


def host_of_url(url: str) -> str:
    return url.removeprefix("http://").removesuffix("/v1")


def test_a_replica_taken_out_is_tried_again_after_its_cooldown() -> None:
    dead = closed_port_url()
    port = int(host_of_url(dead).rsplit(":", 1)[1])

    async def ask(replicas: Replicas, n: int, tag: str) -> list[str]:
        requests = [{"model": "m", "messages": [{"role": "user", "content": f"{tag} {i}"}]} for i in range(n)]
        done = await asyncio.gather(*(complete(replicas, r, RetryPolicy(max_retries=0)) for r in requests))
        return [c.reply.content for c in done]

    async def run(live: OpenAIServer) -> tuple[list[str], list[str]]:
        group = Replicas([dead, live.url], "sk-x", 5.0, concurrency=2, cooldown=0.0)
        try:
            first = await ask(group, 12, "before")
            down = group.replicas[0].down_until is not None
            assert down  # its breaker took it out, the other answered everything
            with OpenAIServer(port=port) as back:
                second = await ask(group, 12, "after")
                assert group.replicas[0].down_until is None and back.calls  # tried again: it answers, it is back
            return first, second
        finally:
            await group.close()

    with OpenAIServer() as live:
        first, second = asyncio.run(run(live))
    assert all(first) and all(second) and len(live.calls) >= 12


def test_batch_takes_one_base_url(
    replicas: tuple[OpenAIServer, OpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = replicas
    source = decoded(tmp_path / "in", {"svit-0": ("Q", ["x", "y"])})
    assert cli_main(annotate_args(f"{a.url},{b.url}", source, tmp_path / "out", "--quiet", "--batch")) == 2
    assert "--batch sends to one endpoint" in capsys.readouterr().err


def pool_with(path: Path, base_url: str | list[str]) -> Path:
    member = {"name": "ep", "kind": "openai", "model": "pool-a", "base_url": base_url, "concurrency": 2}
    path.write_text(yaml.safe_dump({"k": 1, "seed": 3, "generation": {"max_new_tokens": 8}, "members": [member]}))
    return path


def responses(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "responses.jsonl").read_text().splitlines())}


def test_a_pool_member_lists_replicas_and_adding_one_keeps_its_answers(tmp_path: Path) -> None:
    source = instructions(tmp_path / "in", 12)
    with OpenAIServer() as a, OpenAIServer() as b:
        out = tmp_path / "out"
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool_with(tmp_path / "p1.yaml", a.url)),
                         "--out", str(out), "--quiet", "--shard", "0/2"]) == 0  # fmt: skip
        first = len(a.calls)
        assert 0 < first < 12
        pool = pool_with(tmp_path / "p2.yaml", [a.url, b.url])
        assert load_pool(pool).members[0].replicas == (a.url, b.url)
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(out), "--quiet",
                         "--shard", "0/2"]) == 0  # fmt: skip
        assert len(a.calls) == first and not b.calls  # same deployment, same keys: nothing asked again
        whole = tmp_path / "whole"
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(whole), "--quiet"]) == 0
        assert len(a.calls) - first >= 3 and len(b.calls) >= 3  # spread over both
        assert {r["completions"][0]["generation"]["endpoint"] for r in responses(whole).values()} == {host(a)}


def test_decode_shards_merge_into_what_one_run_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = instructions(tmp_path / "in", 10)
    with OpenAIServer() as server:
        pool = pool_with(tmp_path / "pool.yaml", server.url)
        for i in range(2):
            args = ["decode", "--input", str(source), "--pool", str(pool), "--out", str(tmp_path / f"s{i}"),
                    "--quiet", "--shard", f"{i}/2"]  # fmt: skip
            assert cli_main(args) == 0
            said = capsys.readouterr().out
            assert f"decode shard {i}/2 done" in said and "vlfeedback assemble --input" in said
            assert "--store SHARD0/decode/state.sqlite --store SHARD1/decode/state.sqlite" in said
        parts = [json.loads((tmp_path / f"s{i}" / "decode" / "report.json").read_text()) for i in range(2)]
        assert parts[0]["ok"] + parts[1]["ok"] == 10 and parts[0]["other_shards"] == parts[1]["ok"]
        assert not set(responses(tmp_path / "s0")) & set(responses(tmp_path / "s1"))
        stores = [a for i in range(2) for a in ("--store", str(tmp_path / f"s{i}" / "decode" / "state.sqlite"))]
        merged = tmp_path / "merged"
        assert cli_main(["assemble", "--input", str(source), "--out", str(merged), *stores]) == 0
        assert "assembled 10 answered rows" in capsys.readouterr().out
        calls = len(server.calls)
        whole = tmp_path / "whole"
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(whole), "--quiet"]) == 0
    assert calls == 10 and (merged / "responses.jsonl").read_text() == (whole / "responses.jsonl").read_text()
    merged_report = json.loads((merged / "decode" / "report.json").read_text())
    assert merged_report["complete"] and merged_report["ok"] == 10 and merged_report["other_shards"] == 0
    annotate_store = ["--store", str(tmp_path / "x" / "annotate" / "state.sqlite")]
    (tmp_path / "x" / "annotate").mkdir(parents=True)
    (tmp_path / "x" / "annotate" / "state.sqlite").write_bytes(b"")
    assert cli_main(["assemble", "--input", str(source), "--out", str(tmp_path / "m2"), *stores, *annotate_store]) == 2
    assert "merge each stage's shards alone" in capsys.readouterr().err


def test_check_endpoint_names_unreachable_replicas() -> None:
    with OpenAIServer() as live:
        dead = closed_port_url()
        lines = endpoint.check_endpoint([live.url, dead], "sk", 5.0)
    assert lines == [f"--base-url: replica {host_of_url(dead)}: connection refused; the run goes on with the others"]


def test_a_pool_members_replica_killed_mid_decode_loses_nothing(tmp_path: Path) -> None:
    source = instructions(tmp_path / "in", 16)
    with OpenAIServer(latency=0.01) as a, OpenAIServer(latency=0.01) as b:
        a_url = a.url
        a.kill_after(4)
        pool = pool_with(tmp_path / "pool.yaml", [a_url, b.url])
        out = tmp_path / "out"
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(out), "--quiet"]) == 0
        counts = paid(a, b)
    assert a.killed and len(responses(out)) == 16 and len(counts) == 16 and set(counts.values()) == {1}
    report_ = json.loads((out / "decode" / "report.json").read_text())
    assert report_["complete"] and report_["run"]["calls"] == 16
