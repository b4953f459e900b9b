"""``vlfeedback decode``: a pool of a local tiny VLM and two loopback endpoints answers instructions, then the
judge rates the answers and ``build`` ingests the result.

Run: pytest tests/test_pipeline_decode.py
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from release_factory import jpeg, write_release
from support.openai_server import OpenAIServer
from support.pipeline import JUDGE_KEY_ENV, annotate_args

from vlfeedback_kit.builders.pipeline.pool import assign, load_pool
from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.training.tiny_model import build_tiny_model

KEY_ENV = "VLF_TEST_POOL_KEY"


def instructions(folder: Path, count: int) -> Path:
    rows = [
        {"id": f"llava-{i}", "source": "LLaVA", "prompt": f"What is in picture {i}?", "models": [], "completions": []}
        for i in range(count)
    ]
    return write_release(
        folder, rows, images={r["id"]: jpeg((30 * i % 256, 120, 60), 28 + i) for i, r in enumerate(rows)}
    )


def pool_file(path: Path, tiny: Path, url: str, k: int = 2) -> Path:
    pool = {
        "k": k,
        "seed": 5,
        "generation": {"max_new_tokens": 6},
        "members": [
            {"name": "tiny-qwen2-vl", "kind": "transformers", "model": str(tiny), "batch_size": 3, "dtype": "float32"},
            {"name": "endpoint-a", "kind": "openai", "model": "pool-a", "base_url": url, "concurrency": 4},
            {
                "name": "endpoint-b",
                "kind": "openai",
                "model": "pool-b",
                "base_url": url,
                "api_key_env": KEY_ENV,
                "generation": {"temperature": 0.7},
            },
        ],
    }
    path.write_text(yaml.safe_dump(pool))
    return path


def test_a_pool_with_a_local_vlm_and_endpoints_decodes_then_the_judge_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-pool")
    tiny = build_tiny_model("qwen2_vl", tmp_path / "tiny")
    source = instructions(tmp_path / "instructions", 7)
    with OpenAIServer() as server:
        pool = pool_file(tmp_path / "pool.yaml", tiny, server.url)
        out = tmp_path / "responses"
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(out), "--quiet"]) == 0
        rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
        report = json.loads((out / "decode" / "report.json").read_text())
        members = {m.name: m for m in load_pool(pool).members}
        assert [r["id"] for r in rows] == [f"llava-{i}" for i in range(7)] and report["ok"] == 7
        for row in rows:
            names = [m.name for m in assign(row["id"], load_pool(pool))]
            assert row["models"] == names == [c["model"] for c in row["completions"]] and len(set(names)) == 2
            assert row["source"] == "LLaVA" and row["prompt"].startswith("What is in picture")
            for completion in row["completions"]:
                assert completion["generation"] == members[completion["model"]].settings()
                assert isinstance(completion["response"], str)
                if completion["model"].startswith("endpoint"):
                    assert completion["response"].startswith(members[completion["model"]].model + " answers")
            image = f"merged_images/{row['id']}.jpg"
            assert (out / image).read_bytes() == (source / image).read_bytes()
        tiny_answers = sum(c["model"] == "tiny-qwen2-vl" for r in rows for c in r["completions"])
        assert 0 < tiny_answers < 7 and report["asked_this_run"]["tiny-qwen2-vl"] == tiny_answers
        local = report["run"]["local"]["tiny-qwen2-vl"]
        assert local["items"] == tiny_answers and local["seconds"] > 0 and local["items_per_second"] > 0
        assert report["run"]["finished"]["ok"] == 14 - tiny_answers == report["run"]["calls"]
        assert members["endpoint-b"].settings()["temperature"] == 0.7
        assert {c.model for c in server.calls} == {"pool-a", "pool-b"} and server.tokens == {"EMPTY", "sk-test-pool"}

        calls = len(server.calls)
        assert cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(out), "--quiet"]) == 0
        again = json.loads((out / "decode" / "report.json").read_text())
        assert len(server.calls) == calls and set(again["asked_this_run"].values()) == {0}
        assert [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()] == rows

        monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test-judge")
        judged = tmp_path / "annotated"
        assert cli_main(annotate_args(server.url, out, judged, "--quiet")) == 0
    annotated = [json.loads(line) for line in (judged / "vlfeedback.jsonl").read_text().splitlines()]
    assert all(
        c["generation"] and c["annotations"]["Helpfulness"]["Rating"] in "12345"
        for r in annotated
        for c in r["completions"]
    )
    assert cli_main(["build", "--source", str(judged), "--out", str(tmp_path / "built"), "--quiet"]) == 0
    assert json.loads((tmp_path / "built" / "build_report.json").read_text())["kept"] == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": 4}, "k = 4 needs 1 <= k <= 3"),
        ({"members": [{"name": "x", "kind": "openai", "model": "m"}]}, "needs base_url"),
        ({"members": [{"name": "x", "kind": "vllm", "model": "m", "base_url": "http://h/v1"}]}, "kind must be one of"),
        ({"generation": {"max_length": 3}}, "generation.max_length"),
        ({"members": [{"name": "x", "kind": "transformers", "model": "m", "gpu": 1}]}, "unknown key"),
    ],
)
def test_pool_files_are_checked(tmp_path: Path, change: dict, message: str) -> None:
    pool = {"k": 2, "members": [{"name": n, "kind": "openai", "model": n, "base_url": "http://h/v1"} for n in "abc"]}
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({**pool, **change}))
    with pytest.raises(UserError, match=message):
        load_pool(path)


def test_the_example_pool_file_loads() -> None:
    from vlfeedback_kit.builders.pipeline.pool import EXAMPLE_FILE

    pool = load_pool(EXAMPLE_FILE)
    assert pool.k == 4 and len(pool.members) == 5
    assert {m.kind for m in pool.members} == {"transformers", "openai"}
    assert len({tuple(m.name for m in assign(f"svit-{i}", pool)) for i in range(20)}) > 10


def local_answers(served, member, prompts: list[str], images: list[bytes], seeds: list[int]) -> list[str]:
    """What decode's local member answers for one batch: the serving layer with the member's settings."""
    from PIL import Image

    from vlfeedback_kit import serving

    rows = [(Image.open(io.BytesIO(b)).convert("RGB"), p) for p, b in zip(prompts, images, strict=True)]
    return serving.generate(served, rows, None, member.decoding(), seeds=seeds)


def serve(member):
    from vlfeedback_kit import serving

    return serving.load(member.model, member.adapter, dtype=member.dtype, device=member.device)


def test_a_local_member_with_a_peft_adapter_answers_a_batch(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.builders.pipeline.pool import Member

    tiny = build_tiny_model("llava", tmp_path / "tiny")
    lora = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(tiny), LoraConfig(r=4, target_modules=["q_proj"])
    )
    lora.save_pretrained(tmp_path / "adapter")
    member = Member(
        "tiny-lora",
        "transformers",
        str(tiny),
        {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0},
        adapter=str(tmp_path / "adapter"),
    )
    served = serve(member)
    answers = local_answers(
        served, member, ["What colour?", "How many shapes are there in this picture?"], [jpeg(), jpeg(size=40)], [0, 1]
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert type(served.model).__name__ == "PeftModel"
    assert member.settings()["adapter"] == str(tmp_path / "adapter")


def test_a_run_dir_is_a_pool_members_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter sits at the top of a run dir of `vlfeedback train` (as in the example pool file); its base is read
    from the run, so a member may name the run dir alone."""
    import shutil

    from support.tiny_silkie import tiny_silkie

    from vlfeedback_kit.builders.pipeline.pool import EXAMPLE_FILE, adapter_problem

    base, run = tiny_silkie(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run, tmp_path / "runs" / "silkie")
    (example,) = [m for m in load_pool(EXAMPLE_FILE).members if m.adapter]
    assert adapter_problem(example.adapter) is None
    path = tmp_path / "pool.yaml"
    member = {"name": "silkie", "kind": "transformers", "adapter": "runs/silkie", "generation": {"max_new_tokens": 3}}
    path.write_text(yaml.safe_dump({"k": 1, "members": [member]}))
    (loaded,) = load_pool(path).members
    assert loaded.model == str(base) and loaded.adapter == "runs/silkie"
    served = serve(loaded)
    assert type(served.model).__name__ == "PeftModel"
    assert len(local_answers(served, loaded, ["What colour?"], [jpeg()], [0])) == 1


def decode_cli(source: Path, pool: Path, out: Path, *extra: str) -> int:
    return cli_main(["decode", "--input", str(source), "--pool", str(pool), "--out", str(out), "--quiet", *extra])


def endpoint_pool(path: Path, members: list[dict], k: int = 2) -> Path:
    path.write_text(yaml.safe_dump({"k": k, "seed": 3, "generation": {"max_new_tokens": 6}, "members": members}))
    return path


def test_every_member_is_checked_before_the_first_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    source = instructions(tmp_path / "instructions", 3)
    with OpenAIServer() as server:
        members = [
            {"name": "endpoint-a", "kind": "openai", "model": "pool-a", "base_url": server.url},
            {
                "name": "endpoint-b",
                "kind": "openai",
                "model": "pool-b",
                "base_url": server.url,
                "api_key_env": KEY_ENV,
            },
            {"name": "local", "kind": "transformers", "model": str(tmp_path / "no-such-model")},
            {"name": "lora", "kind": "transformers", "model": str(tmp_path), "adapter": str(tmp_path / "no-run")},
        ]
        pool = endpoint_pool(tmp_path / "pool.yaml", members, k=3)
        assert decode_cli(source, pool, tmp_path / "out") == 2
        assert server.calls == [] and server.probes == 0
    err = capsys.readouterr().err
    assert f"{KEY_ENV} is not set" in err and f"'local': model {tmp_path / 'no-such-model'}: no folder" in err
    assert f"member 'lora': model {tmp_path} is a folder without config.json" in err
    assert f"adapter {tmp_path / 'no-run'}: no folder {tmp_path / 'no-run'} here" in err


def test_a_dead_endpoint_member_stops_decode_before_any_member_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from test_pipeline_annotate import closed_port_url

    source, dead = instructions(tmp_path / "instructions", 3), closed_port_url()
    with OpenAIServer() as server:
        members = [
            {"name": "endpoint-a", "kind": "openai", "model": "pool-a", "base_url": server.url},
            {"name": "endpoint-dead", "kind": "openai", "model": "pool-b", "base_url": dead},
        ]
        assert decode_cli(source, endpoint_pool(tmp_path / "pool.yaml", members), tmp_path / "out") == 2
        assert server.calls == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "connection refused" in err[0] and "endpoint-dead" in err[0]
    assert dead.removeprefix("http://").removesuffix("/v1") in err[0]


def test_out_equal_to_input_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    source = instructions(tmp_path / "instructions", 2)
    before = sorted(p.name for p in source.rglob("*"))
    with OpenAIServer() as server:
        members = [{"name": n, "kind": "openai", "model": n, "base_url": server.url} for n in ("a", "b")]
        assert decode_cli(source, endpoint_pool(tmp_path / "pool.yaml", members), source) == 2
        assert server.calls == []
    assert sorted(p.name for p in source.rglob("*")) == before


def test_a_resumed_decode_samples_with_the_seeds_of_an_uninterrupted_one(tmp_path: Path) -> None:
    rows = [
        {
            "id": f"llava-{i}",
            "source": "LLaVA",
            "prompt": f"Q{i}" + (" [[status:500]]" if i % 2 else ""),
            "models": [],
            "completions": [],
        }
        for i in range(6)
    ]
    source = write_release(
        tmp_path / "in", rows, images={r["id"]: jpeg((9 * i, 80, 40), 20 + i) for i, r in enumerate(rows)}
    )
    members = [
        {"name": n, "kind": "openai", "model": n, "base_url": "URL", "generation": {"temperature": 0.8}} for n in "ab"
    ]

    def seeds(server: OpenAIServer) -> dict[tuple[str, str], int]:
        return {(r["model"], r["text"]): r["seed"] for r in server.requests}

    with OpenAIServer() as server:
        pool = endpoint_pool(tmp_path / "pool.yaml", [{**m, "base_url": server.url} for m in members])
        assert decode_cli(source, pool, tmp_path / "once", "--max-retries", "0") == 3  # odd items fail once
        assert decode_cli(source, pool, tmp_path / "once", "--max-retries", "0") == 0
        resumed = seeds(server)
    with OpenAIServer() as server:
        pool = endpoint_pool(tmp_path / "pool.yaml", [{**m, "base_url": server.url} for m in members])
        assert decode_cli(source, pool, tmp_path / "twice", "--max-retries", "1") == 0
        uninterrupted = seeds(server)
    assert resumed == uninterrupted and len(set(resumed.values())) == 12


def test_a_local_member_samples_each_item_with_its_own_seed(tmp_path: Path) -> None:
    """Sampled rows of one padded batch equal the same items answered alone in another order: each row's sample
    depends on its seed and its item only (one batch, where the old member generated one item at a time)."""
    from vlfeedback_kit.builders.pipeline.pool import Member

    tiny = build_tiny_model("llava", tmp_path / "tiny")
    member = Member("tiny", "transformers", str(tiny), {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0})
    served = serve(member)
    prompts, images = ["What colour?", "How many shapes are there in this picture?"], [jpeg(), jpeg(size=40)]
    together = local_answers(served, member, prompts, images, [11, 22])
    alone = [local_answers(served, member, [p], [i], [s])[0]
             for p, i, s in zip(prompts[::-1], images[::-1], [22, 11])][::-1]  # fmt: skip
    assert together == alone
    assert local_answers(served, member, prompts, images, [12, 23]) != together  # the seed is what samples


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"<html>404</html>", "not a recognised image format"),
        (jpeg(size=64)[:-400], "image file is truncated"),
        (b"", "empty image file"),
    ],
    ids=["not-an-image", "truncated-jpeg", "empty-file"],
)
def test_an_image_that_does_not_decode_is_an_invalid_row_not_a_crash(
    tmp_path: Path, content: bytes, detail: str
) -> None:
    source = instructions(tmp_path / "instructions", 3)
    (source / "merged_images" / "llava-1.jpg").write_bytes(content)
    with OpenAIServer() as server:
        members = [{"name": n, "kind": "openai", "model": n, "base_url": server.url} for n in ("a", "b")]
        assert decode_cli(source, endpoint_pool(tmp_path / "pool.yaml", members), tmp_path / "out") == 0
        assert len(server.calls) == 4  # the two good rows, two members each: the bad image reached no model
    report = json.loads((tmp_path / "out" / "decode" / "report.json").read_text())
    assert (report["ok"], report["invalid"]) == (2, 1)
    (failure,) = [
        json.loads(line) for line in (tmp_path / "out" / "decode" / "failures.jsonl").read_text().splitlines()
    ]
    assert failure["id"] == "llava-1" and failure["reason"] == "unreadable_image"
    assert failure["detail"].startswith("merged_images/llava-1.jpg: ") and detail in failure["detail"]


def test_a_truncated_jpeg_never_reaches_a_local_member(tmp_path: Path) -> None:
    """The crash of the issue: a local model decoding a truncated JPEG mid-run (OSError: image file is truncated)."""
    tiny = build_tiny_model("llava", tmp_path / "tiny")
    source = instructions(tmp_path / "instructions", 2)
    image = source / "merged_images" / "llava-0.jpg"
    image.write_bytes(image.read_bytes()[:-200])
    member = {"name": "tiny", "kind": "transformers", "model": str(tiny), "generation": {"max_new_tokens": 2}}
    pool = endpoint_pool(tmp_path / "pool.yaml", [member], k=1)
    assert decode_cli(source, pool, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "decode" / "report.json").read_text())
    assert (report["ok"], report["invalid"], report["asked_this_run"]) == (1, 1, {"tiny": 1})


def test_the_breaker_stops_a_decode_whose_endpoint_keeps_dropping(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from vlfeedback_kit.builders.pipeline.endpoint import BREAKER_LIMIT

    source = instructions(tmp_path / "instructions", 20)
    with OpenAIServer() as server:
        members = [
            {"name": n, "kind": "openai", "model": n, "base_url": server.url, "concurrency": 4} for n in ("a", "b")
        ]
        server.drop_chat = True
        pool = endpoint_pool(tmp_path / "pool.yaml", members)
        assert decode_cli(source, pool, tmp_path / "out", "--max-retries", "2") == 2
        assert server.dropped <= BREAKER_LIMIT + 4  # not 20 answers x 3 tries
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pool member 'a'" in err[0] and "closed the connection without a reply" in err[0]
