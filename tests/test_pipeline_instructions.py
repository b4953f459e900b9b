"""``vlfeedback instructions``: data-driven source adapters, quotas, dedupe, ids, and a Hub dataset as a source.

Run: pytest tests/test_pipeline_instructions.py
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from release_factory import jpeg
from support.hub_server import dataset_repo

from vlfeedback_kit.builders.pipeline.instructions import collect, load_adapters
from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError


def image(n: int) -> bytes:
    return jpeg(((37 * n) % 256, (91 * n) % 256, 120), size=16 + n % 9)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """Four sources in their published layouts (LLaVA json, LRV json, PMC-VQA csv, M3IT jsonl with base64)."""
    coco, vg, pmc = tmp_path / "coco", tmp_path / "vg", tmp_path / "pmc"
    for folder in (coco, vg, pmc / "figures"):
        folder.mkdir(parents=True)
    llava = []
    for i in range(10):
        llava.append(
            {
                "id": f"{i:012d}",
                "image": f"COCO_{i}.jpg",
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhat is object   {i}?"},
                    {"from": "gpt", "value": "A cat."},
                ],
            }
        )
        if i != 7:  # llava record 7 has no image file
            (coco / f"COCO_{i}.jpg").write_bytes(image(i))
    llava.append({**llava[2], "id": "dup"})  # the same image and prompt again
    (tmp_path / "llava_instruct.json").write_text(json.dumps(llava))
    lrv = [{"image_id": f"vg{i}", "question": f"Is there a dog in scene {i}?", "answer": "No."} for i in range(4)]
    lrv.append({"image_id": "same-as-coco-3", "question": "what is OBJECT 3?", "answer": "x"})
    for i in range(4):
        (vg / f"vg{i}.jpg").write_bytes(image(100 + i))
    (vg / "same-as-coco-3.jpg").write_bytes(image(3))
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": lrv}))
    with (pmc / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["Figure_path", "Question", "Choice A", "Choice B", "Choice C", "Choice D"])
        writer.writeheader()
        for i in range(3):
            (pmc / "figures" / f"f{i}.jpg").write_bytes(image(200 + i))
            writer.writerow(
                {
                    "Figure_path": f"figures/f{i}.jpg",
                    "Question": f"Which organ {i}?",
                    "Choice A": "A:liver",
                    "Choice B": "B:lung",
                    "Choice C": "C:heart",
                    "Choice D": "D:brain",
                }
            )
    m3it = [
        {
            "instruction": "Describe.",
            "inputs": f"Image {i}",
            "image_base64_str": [base64.b64encode(image(300 + i)).decode()],
        }
        for i in range(4)
    ]
    (tmp_path / "m3it.jsonl").write_text("\n".join(map(json.dumps, m3it)) + "\n")
    return {
        "llava": tmp_path / "llava_instruct.json",
        "coco": coco,
        "lrv": tmp_path / "filter_cap.json",
        "vg": vg,
        "pmc-vqa": pmc,
        "m3it": tmp_path / "m3it.jsonl",
    }


def run(sources: dict[str, Path], out: Path, *extra: str) -> int:
    args = [
        "instructions",
        "--out",
        str(out),
        "--source",
        f"llava={sources['llava']}",
        "--images",
        f"llava={sources['coco']}",
        "--source",
        f"lrv={sources['lrv']}",
        "--images",
        f"lrv={sources['vg']}",
        "--source",
        f"pmc-vqa={sources['pmc-vqa']}",
        "--source",
        f"m3it={sources['m3it']}",
        "--quota",
        "llava=all",
        "--quota",
        "lrv=all",
        "--quota",
        "m3it=2",
        *extra,
    ]
    return cli_main(args)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "instructions.jsonl").read_text().splitlines()]


def test_sources_are_drawn_by_quota_deduplicated_and_numbered(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(sources, out) == 0
    rows = rows_of(out)
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
        assert row["models"] == [] and row["completions"] == []
    assert [r["id"] for r in by_source["LLaVA"]] == [f"llava-{n}" for n in range(9)]
    assert all(r["prompt"].startswith("What is object ") and "<image>" not in r["prompt"] for r in by_source["LLaVA"])
    assert [r["prompt"] for r in by_source["LRV"]] == [f"Is there a dog in scene {i}?" for i in range(4)]
    assert by_source["PMC-VQA"][0]["prompt"] == "Which organ 0?\nA: A:liver\nB: B:lung\nC: C:heart\nD: D:brain"
    assert [r["prompt"] for r in by_source["M3IT"]][0].startswith("Describe.\nImage ")

    report = json.loads((out / "instructions" / "report.json").read_text())["sources"]
    llava = report["llava"]
    assert (llava["read"], llava["drawn"], llava["no_image"], llava["duplicate"]) == (11, 9, 1, 1)
    assert (report["lrv"]["read"], report["lrv"]["drawn"], report["lrv"]["duplicate"]) == (5, 4, 1)
    assert report["pmc-vqa"]["quota"] == 2364 and report["pmc-vqa"]["shortfall"] == 2361
    assert (report["m3it"]["read"], report["m3it"]["drawn"], report["m3it"]["quota"]) == (4, 2, 2)

    origins = {o["id"]: o for o in map(json.loads, (out / "instruction_source.jsonl").read_text().splitlines())}
    for row in by_source["LLaVA"]:
        index = int(origins[row["id"]]["origin"].split(":")[1])
        assert (out / "merged_images" / f"{row['id']}.jpg").read_bytes() == image(index)
        assert row["prompt"] == f"What is object {index}?"
    drawn = {int(origins[r["id"]]["origin"].split(":")[1]) for r in by_source["LLaVA"]}
    assert drawn == set(range(10)) - {7}  # 7 has no image, 10 repeats 2

    assert run(sources, tmp_path / "again") == 0
    assert rows_of(tmp_path / "again") == rows
    assert run(sources, tmp_path / "other", "--seed", "1") == 0
    m3it = [r["prompt"] for r in rows if r["source"] == "M3IT"]
    assert [r["prompt"] for r in rows_of(tmp_path / "other") if r["source"] == "M3IT"] != m3it


def test_a_hub_dataset_is_a_source_through_a_user_adapter(hub, tmp_path: Path) -> None:
    table = pa.table(
        {
            "question": [f"Question {i}?" for i in range(5)],
            "image": [{"bytes": image(400 + i), "path": f"{i}.jpg"} for i in range(5)],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    dataset_repo(hub, "org/vqa-hub", {"data/train.parquet": tmp_path / "train.parquet"})
    adapters = tmp_path / "adapters.yaml"
    adapters.write_text(
        "vqa-hub:\n  name: VQA-Hub\n  quota: 3\n  reader: fields\n  prompt: '{question}'\n"
        "  image: {field: image, kind: bytes}\n"
    )
    report = collect({"vqa-hub": "org/vqa-hub@main"}, tmp_path / "out", adapters_file=adapters)
    assert report["sources"]["vqa-hub"]["drawn"] == 3
    rows = rows_of(tmp_path / "out")
    assert [r["id"] for r in rows] == ["vqa-hub-0", "vqa-hub-1", "vqa-hub-2"] and rows[0]["source"] == "VQA-Hub"
    index = int(rows[0]["prompt"].split()[1].rstrip("?"))
    assert (tmp_path / "out" / "merged_images" / "vqa-hub-0.jpg").read_bytes() == image(400 + index)


def test_the_kit_adapters_cover_the_paper_table_and_bad_input_is_named(tmp_path: Path) -> None:
    adapters = load_adapters()
    paper = {
        "llava": 19614,
        "svit": 22823,
        "llavar": 13770,
        "lrv": 12357,
        "llava-med": 5861,
        "comvint": 2384,
        "pmc-vqa": 2364,
        "m3it": 687,
        "pca-eval": 398,
    }
    assert {name: adapters[name].quota for name in paper} == paper and sum(paper.values()) == 80258
    assert {"rtvlm", "vlsafe"} <= set(adapters)
    with pytest.raises(UserError, match="no adapter for nope"):
        collect({"nope": str(tmp_path)}, tmp_path / "out")
    with pytest.raises(UserError, match="--images/--quota name lrv without a --source"):
        collect({"llava": str(tmp_path)}, tmp_path / "out", quotas={"lrv": "3"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("mine:\n  reader: fields\n")
    with pytest.raises(UserError, match="adapter 'mine': a fields reader needs a prompt template"):
        load_adapters(bad)


def test_a_short_candidate_pool_is_widened_until_the_quota_is_met(tmp_path: Path) -> None:
    from vlfeedback_kit.builders.pipeline.instructions import draw, priority

    adapter = load_adapters()["lrv"]
    last = max(range(200), key=lambda i: priority(0, "lrv", i))  # drawn last in the seeded order
    records = [{"image_id": f"v{i}", "question": f"Q{i}?"} for i in range(200)]
    (tmp_path / "lrv.json").write_text(json.dumps(records))
    for i in (last, 5):
        (tmp_path / f"v{i}.jpg").write_bytes(image(i))
    drawn, counts = draw(adapter, [tmp_path / "lrv.json"], tmp_path, 2, 0, set())
    assert [d.prompt for d in drawn] == ["Q5?", f"Q{last}?"]
    assert (counts["drawn"], counts["no_image"], counts["read"]) == (2, 198, 200)


def test_why_rows_were_skipped_is_said_and_a_source_that_drew_nothing_fails(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def instructions(*args: str) -> int:
        return cli_main(["instructions", "--out", str(tmp_path / "out"), "--quiet", *args])

    assert instructions("--source", f"llava={sources['llava']}", "--quota", "llava=all") == 1
    printed = capsys.readouterr().out
    assert f"11/11 rows had no image under {sources['llava'].parent} — pass --images llava=DIR" in printed
    assert "next:" not in printed and "no instructions drawn from llava" in printed

    assert instructions("--source", f"llava={sources['lrv']}", "--images", f"llava={sources['vg']}") == 1
    printed = capsys.readouterr().out
    assert "fields 'conversations', 'image' not in the records: answer, image_id, question" in printed

    adapters = tmp_path / "adapters.yaml"
    adapters.write_text(
        "lrv:\n  reader: fields\n  prompt: '{qestion}'\n  image: {field: image_id, template: '{}.jpg'}\n"
    )
    assert (
        instructions(
            "--adapters", str(adapters), "--source", f"lrv={sources['lrv']}", "--images", f"lrv={sources['vg']}"
        )
        == 1
    )
    assert "field 'qestion' not in the records: answer, image_id, question" in capsys.readouterr().out


def test_unreadable_sources_are_one_line_errors_and_leave_no_temp_files(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"id": 1},\n  {"id": 2,, }\n]\n')
    broken_lines = tmp_path / "m3it-broken.jsonl"
    broken_lines.write_text('{"instruction": "a"}\n{"instruction": \n')
    out = tmp_path / "out"
    good = ["--source", f"llava={sources['llava']}", "--images", f"llava={sources['coco']}", "--quota", "llava=all"]
    cases = [
        (["--source", f"lrv={broken}"], f"{broken}: invalid JSON at line 3, column 12"),
        (["--source", f"m3it={broken_lines}"], f"{broken_lines}: invalid JSON on line 2"),
        (["--source", "lrv=data/lrv/missing.json"], "--source lrv=data/lrv/missing.json: no such file or folder"),
    ]
    for extra, message in cases:
        assert cli_main(["instructions", "--out", str(out), "--quiet", *good, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Hub" not in err[0]
        assert not [p for p in tmp_path.rglob("*.tmp")]


def test_images_are_checked_by_header_and_non_jpeg_is_converted(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    png = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 30, 30)).save(png, format="PNG")
    files = {"a.jpg": image(1), "b.jpg": png.getvalue(), "c.jpg": b"<html>not found</html>", "d.png": png.getvalue()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    records = [
        {"image": name, "conversations": [{"from": "human", "value": f"Question about {name}?"}]} for name in files
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    report = collect(
        {"llava": str(tmp_path / "llava.json")}, out, images={"llava": str(folder)}, quotas={"llava": "all"}
    )
    counts = report["sources"]["llava"]
    assert (counts["drawn"], counts["bad_image"], counts["converted"]) == (3, 1, 2)
    assert counts["duplicate"] == 0 and "1/4 rows' images are not images" in counts["notes"][0]
    rows = {r["prompt"]: r["id"] for r in rows_of(out)}
    assert (out / "merged_images" / f"{rows['Question about a.jpg?']}.jpg").read_bytes() == image(1)
    converted = (out / "merged_images" / f"{rows['Question about b.jpg?']}.jpg").read_bytes()
    assert Image.open(io.BytesIO(converted)).format == "JPEG"
    origins = [json.loads(line) for line in (out / "instruction_source.jsonl").read_text().splitlines()]
    assert [o.get("converted_from") for o in origins] == [None, "PNG", "PNG"]


def test_help_and_list_adapters_name_every_adapter_and_its_fields(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["instructions", "--list-adapters"]) == 0
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["instructions", "--help"])
    helped = capsys.readouterr().out
    for name, adapter in load_adapters().items():
        assert adapter.describe() in listed and f"  {name} (" in helped
    assert "lrv (LRV, quota 12357): prompt '{question}'; image 'image_id' (path as '{}.jpg')" in listed


def secret_outside(tmp_path: Path) -> tuple[Path, bytes]:
    """A private file outside every folder the kit is given, that would decode as an image if it were read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = jpeg((1, 2, 3), size=24)
    (outside / "id_rsa.jpg").write_bytes(secret)
    return outside, secret


def assert_not_published(out: Path, outside: Path, secret: bytes) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["id_rsa.jpg"]  # nothing written beside it
    assert all(secret not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_an_image_path_that_leads_outside_the_images_root_is_skipped_never_read(tmp_path: Path) -> None:
    """A record may not point at a file outside ``--images``: ``../``, an absolute path, or a symlink in the root."""
    outside, secret = secret_outside(tmp_path)
    root = tmp_path / "root"
    images = root / "images"
    images.mkdir(parents=True)
    (images / "ok.jpg").write_bytes(image(1))
    (images / "link.jpg").symlink_to(outside / "id_rsa.jpg")
    values = ["ok.jpg", "../../outside/id_rsa.jpg", str(outside / "id_rsa.jpg"), "link.jpg"]
    records = [{"image": v, "conversations": [{"from": "human", "value": f"Q{n}?"}]} for n, v in enumerate(values)]
    (root / "llava.json").write_text(json.dumps(records))
    out = root / "out"
    report = collect({"llava": str(root / "llava.json")}, out, images={"llava": str(images)}, quotas={"llava": "all"})
    counts = report["sources"]["llava"]
    assert (counts["drawn"], counts["unsafe_path"], counts["no_image"]) == (1, 3, 0)
    assert "3/4 rows' image paths lead outside" in counts["notes"][0]
    assert [u.split(":")[:2] for u in counts["unsafe_paths"]] == [["llava.json", str(n)] for n in (1, 2, 3)]
    assert [r["prompt"] for r in rows_of(out)] == ["Q0?"]
    assert_not_published(out, outside, secret)


def test_a_hub_record_cannot_point_outside_its_snapshot(hub, tmp_path: Path) -> None:
    outside, secret = secret_outside(tmp_path)
    escapes = ["../" * 40 + str(outside / "id_rsa.jpg").lstrip("/"), str(outside / "id_rsa.jpg")]
    table = pa.table({"question": ["Q0?", "Q1?", "Q2?"], "image_path": ["images/0.jpg", *escapes]})
    pq.write_table(table, tmp_path / "train.parquet")
    (tmp_path / "0.jpg").write_bytes(image(5))
    files = {"data/train.parquet": tmp_path / "train.parquet", "images/0.jpg": tmp_path / "0.jpg"}
    dataset_repo(hub, "org/paths", files)
    adapters = tmp_path / "adapters.yaml"
    adapters.write_text("paths:\n  reader: fields\n  prompt: '{question}'\n  image: {field: image_path}\n")
    out = tmp_path / "out"
    report = collect({"paths": "org/paths@main"}, out, adapters_file=adapters, quotas={"paths": "all"})
    counts = report["sources"]["paths"]
    assert (counts["drawn"], counts["unsafe_path"]) == (1, 2)  # the repo's own file is read through the HF cache
    assert (out / "merged_images" / "paths-0.jpg").read_bytes() == image(5)
    assert_not_published(out, outside, secret)
