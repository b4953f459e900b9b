"""``vlfeedback annotate`` and ``assemble`` end to end against the loopback OpenAI-compatible server.

Run: pytest tests/test_pipeline_annotate.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_factory import jpeg, row, write_release
from support.openai_server import TEXT_BLOCK, OpenAIServer
from support.pipeline import JUDGE_KEY_ENV as KEY_ENV
from support.pipeline import annotate_args

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.builders.pipeline.judge import load_template
from vlfeedback_kit.cli import main as cli_main

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
GPT_4O = (2.50, 10.00)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """The loopback judge, and the API key in the environment variable the tests name."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    with OpenAIServer(latency=0.01, retry_after_ms=150) as running:
        yield running


def marked(ratings: tuple[int, int, int], text: str) -> str:
    """A response the loopback judge rates with exactly these (Helpfulness, Faithfulness, Ethics) ratings."""
    return f"{text} [[rate={ratings[0]},{ratings[1]},{ratings[2]}]]"


def decoded(folder: Path, items: dict[str, tuple[str, list[str]]], images: dict[str, bytes] | None = None) -> Path:
    """A decoded release (responses, no meaningful ratings): id → (prompt, responses)."""
    rows = [row(i, [(1, 1, 1)] * len(r), responses=r, prompt=p) for i, (p, r) in items.items()]
    default = {i: jpeg((40 * n % 256, 90, 160), size=24 + n) for n, i in enumerate(items)}
    return write_release(folder, rows, images=default if images is None else images)


def annotate(server: OpenAIServer, source: Path, out: Path, *extra: str) -> int:
    """Run the CLI verb in this process."""
    return cli_main(annotate_args(server.url, source, out, "--quiet", *extra))


def output(out: Path) -> dict[str, dict]:
    """The annotated rows by id."""
    return {r["id"]: r for r in map(json.loads, (out / "vlfeedback.jsonl").read_text().splitlines())}


def report(out: Path) -> dict:
    return json.loads((out / "annotate" / "report.json").read_text())


def failures(out: Path) -> dict[str, dict]:
    return {f["id"]: f for f in map(json.loads, (out / "annotate" / "failures.jsonl").read_text().splitlines())}


def ratings_of(completion: dict) -> tuple[int, ...]:
    return tuple(int(completion["annotations"][aspect]["Rating"]) for aspect in ASPECTS)


def test_ratings_land_on_the_right_response_after_shuffling(server: OpenAIServer, tmp_path: Path) -> None:
    expected = {f"svit-{i}": [(k % 5 + 1, (k + i) % 5 + 1, (2 * k + i) % 5 + 1) for k in range(4)] for i in range(12)}
    items = {
        i: (f"Question {i}?", [marked(r, f"answer {k} of {i}") for k, r in enumerate(rs)])
        for i, rs in expected.items()
    }
    assert annotate(server, decoded(tmp_path / "in", items), tmp_path / "out", "--shuffle", "--seed", "3") == 0
    rows = output(tmp_path / "out")
    moved = 0
    for item_id, row_ in rows.items():
        assert [ratings_of(c) for c in row_["completions"]] == expected[item_id]
        order = row_["judge"]["permutation"]
        (call,) = server.calls_about(f"Question {item_id}?")
        shown = [body for _, body in TEXT_BLOCK.findall(call.text)]
        assert shown == [items[item_id][1][k] for k in order]
        moved += order != sorted(order)
    assert moved >= 6


def test_outcomes_are_recorded_and_every_row_is_accounted_for(server: OpenAIServer, tmp_path: Path) -> None:
    good = [marked((5, 4, 5), "fine"), marked((2, 1, 5), "poor")]
    items = {
        "llava-0": ("Plain question?", good),
        "llava-1": ("Malformed once [[malformed]]", good),
        "llava-2": ("Always malformed [[malformed:always]]", good),
        "llava-3": ("Refuse in words [[refuse]]", good),
        "llava-4": ("Refuse in the field [[refuse-field]]", good),
        "llava-5": ("Original format [[sectioned]]", good),
        "llava-6": ("Missing image", good),
    }
    source = decoded(tmp_path / "in", items)
    (source / "merged_images" / "llava-6.jpg").unlink()
    with (source / "vlfeedback_80k.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "llava-7", "prompt": "no responses", "models": [], "completions": []}) + "\n")
        handle.write("{not json\n")
    out = tmp_path / "out"
    assert annotate(server, source, out) == 1  # 6 of 9 rows not rated: over --max-fail-rate

    rows, failed, counts = output(out), failures(out), report(out)
    assert sorted(rows) == ["llava-0", "llava-1", "llava-5"]
    for row_ in rows.values():
        assert [ratings_of(c) for c in row_["completions"]] == [(5, 4, 5), (2, 1, 5)]
        assert row_["judge"]["model"] == "gpt-4o" and row_["judge"]["outcome"] == "ok"
        assert row_["judge"]["template_sha256"] == load_template().sha256
    assert rows["llava-1"]["judge"]["attempts"] == 2
    second = server.calls_about("Malformed once")[1]
    assert second.attempt == 2 and "could not be read: Text 2 has no Ethical Considerations" in second.last_text
    assert failed["llava-2"]["outcome"] == "failed" and failed["llava-2"]["attempts"] == 3
    assert (
        len(failed["llava-2"]["replies"]) == 3
        and "has no Ethical Considerations rating" in failed["llava-2"]["reason"]
    )
    assert failed["llava-3"]["outcome"] == "refused" and "I'm sorry" in failed["llava-3"]["raw_reply"]
    assert failed["llava-4"]["outcome"] == "refused" and len(server.calls_about("Refuse in the field")) == 1
    assert failed["llava-6"]["reason"] == "missing_image" and failed["llava-7"]["reason"] == "invalid_row"
    assert [f["reason"] for f in failed.values() if f["id"] is None] == ["invalid_json"]
    assert (counts["rows"], counts["ok"], counts["failed"], counts["refused"], counts["invalid"]) == (9, 3, 1, 2, 3)
    assert counts["pending"] == 0 and counts["complete"]
    judges = json.loads((out / "judge.json").read_text())["judges"]
    (judge,) = judges
    assert {k: judge[k] for k in ("model", "template_sha256", "items")} == {
        "model": "gpt-4o",
        "template_sha256": load_template().sha256,
        "items": 3,
    }
    assert judge["template_text"] == load_template().text and "rubric.md" in judge["template"]
    assert (judge["shuffle_seed"], judge["temperature"], judge["seed"]) == (None, 0.0, 0)
    assert sorted(p.name for p in (out / "merged_images").iterdir()) == ["llava-0.jpg", "llava-1.jpg", "llava-5.jpg"]
    assert (out / "merged_images" / "llava-5.jpg").read_bytes() == (
        source / "merged_images" / "llava-5.jpg"
    ).read_bytes()

    calls = len(server.calls)
    assert annotate(server, source, out, "--max-fail-rate", "0.7") == 0
    assert len(server.calls) == calls and output(out) == rows
    assert cli_main(["build", "--source", str(out), "--out", str(tmp_path / "built"), "--quiet"]) == 0
    built = json.loads((tmp_path / "built" / "build_report.json").read_text())
    assert (built["kept"], built["rejected"]) == (3, 0)
    assert json.loads((tmp_path / "built" / "judge.json").read_text())["judges"] == judges


def test_rate_limits_server_errors_and_timeouts_are_retried(
    server: OpenAIServer, tmp_path: Path, transport: str
) -> None:
    good = [marked((4, 4, 4), "a"), marked((1, 2, 3), "b")]
    items = {
        "lrv-0": ("Rate limited [[status:429]]", good),
        "lrv-1": ("Server error [[status:500]]", good),
        "lrv-2": ("Slow first [[slow:2]]", good),
        "lrv-3": ("Plain", good),
    }
    server.fail_next(503, 2)
    assert annotate(server, decoded(tmp_path / "in", items), tmp_path / "out", "--timeout", "0.5") == 0
    assert len(output(tmp_path / "out")) == 4
    limited = [c for c in server.calls_about("Rate limited") if c.status != 503]  # fail_next hits whoever is first
    assert [c.status for c in limited] == [429, 200]
    assert limited[1].at - limited[0].at >= 0.15  # retry-after-ms: 150
    assert [c.status for c in server.calls_about("Server error") if c.status != 503] == [500, 200]
    retries = report(tmp_path / "out")["run"]["retries"]
    assert retries["HTTP 429"] == 1 and retries["HTTP 500"] == 1 and retries["HTTP 503"] == 2
    assert retries["APITimeoutError"] == 1


def test_cost_accounting_matches_the_usage_the_server_reported(server: OpenAIServer, tmp_path: Path) -> None:
    items = {
        f"m3it-{i}": (f"Q{i} [[malformed]]" if i % 3 == 0 else f"Q{i}", [f"a{i}", f"b{i}", f"c{i}"]) for i in range(9)
    }
    assert annotate(server, decoded(tmp_path / "in", items), tmp_path / "out") == 0
    prompt, completion = server.usage_totals()
    ledger = report(tmp_path / "out")["ledger"]
    assert (ledger["prompt_tokens"], ledger["completion_tokens"], ledger["calls"]) == (prompt, completion, 12)
    assert ledger["cost_usd"] == pytest.approx((prompt * GPT_4O[0] + completion * GPT_4O[1]) / 1e6, abs=1e-6)
    rows = output(tmp_path / "out").values()
    assert sum(r["judge"]["usage"]["prompt_tokens"] for r in rows) == prompt
    assert sum(r["judge"]["cost_usd"] for r in rows) == pytest.approx(ledger["cost_usd"], abs=1e-6)


def test_dry_run_and_max_cost(server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    items = {f"pca-eval-{i}": (f"Q{i}", [f"a{i}", f"b{i}"]) for i in range(10)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--dry-run") == 0
    estimate = json.loads(capsys.readouterr().out)
    assert server.calls == [] and not out.exists()
    assert (estimate["items"], estimate["to_judge"]) == (10, 10) and estimate["estimated_cost_usd"] > 0
    per_item = estimate["mean_cost_per_item_usd"]

    budget = 3.5 * per_item
    assert annotate(server, source, out, "--max-cost", str(budget), "--concurrency", "2") == 3
    first = report(out)
    assert 0 < first["ok"] < 10 and first["pending"] == 10 - first["ok"]
    assert first["ledger"]["cost_usd"] <= budget and "--max-cost" in first["run"]["stopped"]
    assert sum(f["outcome"] == "pending" for f in failures(out).values()) == first["pending"]

    assert annotate(server, source, out, "--max-cost", "100") == 0
    assert report(out)["ok"] == 10 and set(server.counts_by_hash().values()) == {1}
    capsys.readouterr()
    assert annotate(server, source, out, "--dry-run") == 0
    assert json.loads(capsys.readouterr().out)["to_judge"] == 0


def test_shards_split_the_work_and_assemble_merges_them(server: OpenAIServer, tmp_path: Path) -> None:
    items = {f"comvint-{i}": (f"Q{i}", [marked((i % 5 + 1, 3, 5), "a"), "b"]) for i in range(16)}
    source = decoded(tmp_path / "in", items)
    for shard in ("0/2", "1/2"):
        assert annotate(server, source, tmp_path / f"shard{shard[0]}", "--shard", shard) == 0
    parts = [report(tmp_path / f"shard{s}") for s in "01"]
    assert parts[0]["ok"] + parts[1]["ok"] == 16 and parts[0]["other_shards"] == parts[1]["ok"]
    assert not set(output(tmp_path / "shard0")) & set(output(tmp_path / "shard1"))
    stores = [arg for s in "01" for arg in ("--store", str(tmp_path / f"shard{s}" / "annotate" / "state.sqlite"))]
    merged = tmp_path / "merged"
    assert cli_main(["assemble", "--input", str(source), "--out", str(merged), *stores]) == 0
    assert sorted(output(merged)) == sorted(items) and report(merged)["complete"]
    assert set(server.counts_by_hash().values()) == {1}


def test_retry_failed_asks_again_and_keeps_the_ledger(server: OpenAIServer, tmp_path: Path) -> None:
    source = decoded(tmp_path / "in", {"rtvlm-0": ("Bad judge [[malformed:3]]", ["a", "b"])})
    out = tmp_path / "out"
    assert annotate(server, source, out, "--max-attempts", "2") == 1
    assert failures(out)["rtvlm-0"]["outcome"] == "failed"
    assert annotate(server, source, out, "--max-attempts", "2", "--retry-failed") == 0
    row_ = output(out)["rtvlm-0"]
    assert row_["judge"]["attempts"] == 2 and len(server.calls_about("Bad judge")) == 4
    assert report(out)["ledger"]["calls"] == 4 and report(out)["run"]["reopened"] == 1


def test_bad_flags_and_settings_fail_early_naming_the_flag(
    server: OpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    source, out = decoded(tmp_path / "in", {"svit-0": ("Q", ["a", "b"])}), tmp_path / "out"
    for extra, flag in [
        (["--batch-id", "batch-1"], "--batch-id"),
        (["--no-wait"], "--no-wait"),
        (["--shard", "2/2"], "--shard"),
        (["--concurrency", "0"], "--concurrency"),
    ]:
        assert annotate(server, source, out, *extra) == 2
        assert flag in capsys.readouterr().err
    monkeypatch.delenv(KEY_ENV)
    assert annotate(server, source, out) == 2
    assert f"{KEY_ENV} is not set" in capsys.readouterr().err
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert annotate(server, source, out) == 0
    assert cli_main(annotate_args(server.url, source, out, "--quiet", judge_model="gpt-4.1")) == 2
    assert "--judge-model" in capsys.readouterr().err
    assert server.tokens == {SECRET}
    for path in out.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_the_original_template_works_as_is(server: OpenAIServer, tmp_path: Path) -> None:
    from test_pipeline_judge import ORIGINAL_TEMPLATE

    template = tmp_path / "annotation_template.txt"
    template.write_text(ORIGINAL_TEMPLATE)
    items = {f"llava-{i}": (f"Q{i}", [marked((4, 5, 5), f"a{i}"), marked((2, 1, 5), f"b{i}")]) for i in range(3)}
    source = decoded(tmp_path / "in", items)
    out = tmp_path / "out"
    assert annotate(server, source, out, "--template", str(template)) == 0
    rows = output(out)
    assert sorted(rows) == sorted(items)
    for row_ in rows.values():
        assert [ratings_of(c) for c in row_["completions"]] == [(4, 5, 5), (2, 1, 5)]
    (call, *_) = server.calls_about("Instruction: Q0\n")
    assert "- <text 1> a0 [[rate=4,5,5]]\n- <text 2> b0 [[rate=2,1,5]]" in call.text
    assert report(out)["judge"]["template_sha256"] == load_template(template).sha256


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both of openai's transports: aiohttp (the kit's default when installed) reports a refused or dropped
    connection as a connect timeout, httpx as a connection error; the kit must tell them apart the same way."""
    from vlfeedback_kit.builders.pipeline import endpoint

    if request.param == "httpx":
        monkeypatch.setattr(endpoint, "aiohttp_client", lambda base_url, timeout: None)
    else:
        assert endpoint.aiohttp_client("http://127.0.0.1:1/v1", 5.0) is not None
    return request.param


def test_a_closed_port_stops_the_run_at_once_naming_host_and_cause(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture, transport: str
) -> None:
    items = {f"svit-{i}": (f"Q{i}", ["a", "b"]) for i in range(16)}
    source, out, url = decoded(tmp_path / "in", items), tmp_path / "out", closed_port_url()
    assert cli_main(annotate_args(url, source, out, "--quiet", "--max-retries", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url.removeprefix("http://").removesuffix("/v1") in err[0]
    assert "connection refused" in err[0] and "--base-url" in err[0]
    assert not (out / "annotate" / "state.sqlite").exists()


def test_a_base_url_without_v1_gets_the_hint_before_any_call(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = decoded(tmp_path / "in", {"svit-0": ("Q", ["a", "b"])})
    url = server.url.removesuffix("/v1")
    assert cli_main(annotate_args(url, source, tmp_path / "out", "--quiet", "--max-retries", "1")) == 2
    err = capsys.readouterr().err
    assert "404" in err and f"{url}/v1" in err and server.calls == []
    with_credentials = url.replace("http://", f"http://user:{SECRET}@")
    assert cli_main(annotate_args(with_credentials, source, tmp_path / "out", "--quiet")) == 2
    err = capsys.readouterr().err
    assert f"{url}/v1" in err and SECRET not in err


def test_the_breaker_stops_a_run_whose_connections_keep_dropping(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture, transport: str
) -> None:
    from vlfeedback_kit.builders.pipeline.endpoint import BREAKER_LIMIT

    items = {f"svit-{i}": (f"Q{i}", ["a", "b"]) for i in range(40)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    server.drop_chat = True
    assert annotate(server, source, out, "--concurrency", "4", "--max-retries", "2") == 2
    assert server.probes == 1 and server.dropped <= BREAKER_LIMIT + 4  # not 40 items x 3 tries
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "closed the connection without a reply" in err[0] and "127.0.0.1" in err[0]


def test_a_run_that_rated_nothing_exits_non_zero_with_the_reasons(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    items = {f"svit-{i}": (f"Bad {i} [[malformed:always]]", ["a", "b"]) for i in range(4)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--max-attempts", "2") == 1
    printed = capsys.readouterr().out
    assert "4 of 4 rows were not rated (100.0% > --max-fail-rate 5.0%)" in printed and "release layout" not in printed
    assert "4  failed: Text 2 has no Ethical Considerations rating" in printed
    undecoded = write_release(
        tmp_path / "instructions",
        [{"id": f"llava-{i}", "prompt": f"Q{i}", "models": [], "completions": []} for i in range(16)],
        images={f"llava-{i}": jpeg(size=20 + i) for i in range(16)},
    )
    assert annotate(server, undecoded, tmp_path / "out2") == 1
    printed = capsys.readouterr().out
    assert "16 of 16 rows were not rated" in printed and "16  invalid: 'completions' is missing or empty" in printed
    assert report(tmp_path / "out2")["fail_rate"] == 1.0


def test_json_schema_response_format_and_seed_are_sent_and_recorded(server: OpenAIServer, tmp_path: Path) -> None:
    from vlfeedback_kit.builders.pipeline.judge import response_schema

    items = {f"svit-{i}": (f"Q{i}", ["a", "b", "c"]) for i in range(3)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--response-format", "json-schema", "--seed", "7") == 0
    assert all(r["response_format"] == response_schema(3) and r["seed"] == 7 for r in server.requests)
    schema = response_schema(3)["json_schema"]["schema"]
    assert schema["required"] == list(ASPECTS) and schema["properties"]["Helpfulness"]["items"]["required"] == [
        "text",
        "rationale",
        "rating",
    ]
    assert report(out)["judge"]["response_format"] == "json-schema" and report(out)["judge"]["seed"] == 7
    assert report(out)["run"]["seed_sent"] is True


def test_an_endpoint_without_structured_output_stops_the_run_at_once(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    server.reject_params = {"response_format"}
    items = {f"svit-{i}": (f"Q{i}", ["a", "b"]) for i in range(8)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--response-format", "json-schema", "--concurrency", "1") == 2
    assert "does not take --response-format json-schema" in capsys.readouterr().err and len(server.requests) == 1


def test_an_endpoint_that_refuses_seed_is_asked_without_it(server: OpenAIServer, tmp_path: Path) -> None:
    server.reject_params = {"seed"}
    items = {f"svit-{i}": (f"Q{i}", ["a", "b"]) for i in range(3)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--concurrency", "1") == 0
    assert sorted(output(out)) == sorted(items) and report(out)["run"]["seed_sent"] is False
    assert sum("seed" in r for r in server.requests) == 1


def test_messages_name_the_changed_field_the_budget_the_unknown_price_and_assemble(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    items = {f"lrv-{i}": (f"Q{i}", ["a", "b"]) for i in range(6)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    assert annotate(server, source, out, "--shuffle") == 0
    capsys.readouterr()
    assert annotate(server, source, out) == 2
    assert "shuffle_seed: 0 → null" in capsys.readouterr().err

    tight = tmp_path / "tight"
    assert annotate(server, source, tight, "--max-cost", "0.0001") == 3
    printed = capsys.readouterr().out
    assert "raise --max-cost" in printed and "re-run the same command" not in printed

    dry = annotate_args(server.url, source, tmp_path / "dry", "--quiet", "--dry-run", judge_model="local-judge")
    assert cli_main(dry) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["estimated_prompt_tokens"] > 0 and estimate["estimated_completion_tokens"] > 0
    assert estimate["estimated_cost_usd"] is None and "--prices" in estimate["cost_unknown"]
    unpriced = annotate_args(server.url, source, tmp_path / "unpriced", "--quiet", judge_model="local-judge")
    assert cli_main(unpriced) == 0
    printed = capsys.readouterr().out
    assert "cost unknown" in printed and "$0.0000" not in printed
    assert report(tmp_path / "unpriced")["run"]["cost_usd"] is None

    assert annotate(server, source, tmp_path / "shard0", "--shard", "0/2") == 0
    assert "vlfeedback assemble" in capsys.readouterr().out


def test_build_keeps_the_judge_record_and_generation_settings_and_the_card_states_the_template(
    server: OpenAIServer, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq
    from test_pipeline_judge import ORIGINAL_TEMPLATE

    template = tmp_path / "annotation_template.txt"
    template.write_text(ORIGINAL_TEMPLATE)
    local = {"kind": "transformers", "model": "llava-hf/llava-1.5-7b-hf", "adapter": None, "dtype": "bfloat16"}
    remote = {"kind": "openai", "model": "gpt-4o", "endpoint": "api.openai.com"}
    sampling = {"max_new_tokens": 512, "temperature": 0.7, "top_p": 0.9}
    items = {f"llava-{i}": (f"Q{i}", [marked((4, 5, 5), f"a{i}"), marked((2, 1, 5), f"b{i}")]) for i in range(6)}
    source = decoded(tmp_path / "in", items)
    rows = [json.loads(line) for line in (source / "vlfeedback_80k.jsonl").read_text().splitlines()]
    for row_ in rows:
        row_["completions"][0]["generation"] = {**local, **sampling}
        row_["completions"][1]["generation"] = {**remote, **sampling, "temperature": 0.0}
    (source / "vlfeedback_80k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, built = tmp_path / "out", tmp_path / "built"
    assert annotate(server, source, out, "--template", str(template), "--shuffle", "--seed", "3") == 0
    assert cli_main(["build", "--source", str(out), "--out", str(built), "--quiet"]) == 0

    annotated = output(out)
    judgements = pq.read_table(list((built / "data" / "judgements").glob("*.parquet"))).to_pylist()
    assert sorted(j["id"] for j in judgements) == sorted(items)
    for record in judgements:
        judge = annotated[record["id"]]["judge"]
        assert record["judge"]["raw_reply"] == judge["raw_reply"] and "Output for Text 1" in judge["raw_reply"]
        assert record["judge"]["permutation"] == judge["permutation"] and record["judge"]["attempts"] == 1
        assert record["judge"]["usage"] == judge["usage"] and record["judge"]["cost_usd"] == judge["cost_usd"]
        assert record["completions"][0]["generation"] == {**local, **sampling, "endpoint": None}
        assert record["completions"][1]["generation"]["endpoint"] == "api.openai.com"

    card = (built / "README.md").read_text()
    sha = load_template(template).sha256
    assert f"annotation_template.txt (a user template), sha256 `{sha}`; its exact text is in `judge.json`" in card
    assert "shuffle seed 3" in card and "temperature 0.0" in card and "config_name: judgements" in card
    assert "| `model-0` | transformers | `llava-hf/llava-1.5-7b-hf` | bfloat16 | 512 | 0.7 | 0.9 | 6 |" in card
    assert json.loads((built / "judge.json").read_text())["judges"][0]["template_text"] == ORIGINAL_TEMPLATE
    assert cli_main(["inspect", str(built)]) == 0


def test_a_store_made_before_requests_carried_a_seed_resumes_without_calls(
    server: OpenAIServer, tmp_path: Path
) -> None:
    from vlfeedback_kit.builders.pipeline.annotate import state_path
    from vlfeedback_kit.builders.pipeline.items import plan
    from vlfeedback_kit.builders.pipeline.judge import JudgeSettings
    from vlfeedback_kit.builders.pipeline.layout import open_input
    from vlfeedback_kit.builders.pipeline.store import Store

    items = {f"svit-{i}": (f"Q{i}", [marked((4, 4, 4), "a"), marked((1, 2, 3), "b")]) for i in range(3)}
    source, out = decoded(tmp_path / "in", items), tmp_path / "out"
    old = JudgeSettings(model="gpt-4o", template_sha256=load_template().sha256)  # what older kits recorded
    assert "seed" not in old.to_dict()
    annotations = [
        {a: {"Rating": str(r), "Rationale": "r"} for a, r in zip(ASPECTS, rs)} for rs in [(4,) * 3, (1, 2, 3)]
    ]
    done = {"attempts": 1, "permutation": [0, 1], "raw_reply": "{}", "usage": {}, "cost_usd": 0.0}
    with open_input(source) as folder, Store(state_path(out)) as store:
        store.bind("judge", old.to_dict(), "")
        work = plan(folder, old, load_template())
        store.put_many([(p.key, p.item_id, "ok", {**done, "annotations": annotations}) for p in work.items])
    assert annotate(server, source, out) == 0
    assert server.calls == [] and sorted(output(out)) == sorted(items)


def test_out_equal_to_input_is_refused_before_anything_is_created(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = decoded(tmp_path / "in", {"svit-0": ("Q", ["a", "b"])})
    before = sorted(p.name for p in source.rglob("*"))
    assert annotate(server, source, source) == 2
    assert "is the --input folder" in capsys.readouterr().err
    assert sorted(p.name for p in source.rglob("*")) == before and server.calls == []
