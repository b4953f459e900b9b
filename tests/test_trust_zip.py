"""An archive's member names are data: ``merged_images.zip`` is read into memory by safe member name, never
extracted, and a member named ``../x``, ``/x``, ``..\\x`` or ``C:/x`` is never read — the row it would feed is a
reject naming the member, and nothing is written outside the build's folder. Run: pytest tests/test_trust_zip.py
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from release_factory import jpeg, row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.builders.pipeline.layout import open_input
from vlfeedback_kit.builders.sources import member_problem

GOOD = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]
SECRET = jpeg((1, 2, 3), size=24)


@pytest.mark.parametrize(
    "member", ["merged_images/svit-0.jpg", "svit-0.jpg", "a/b/c/svit-0.jpg", "merged_images/x y.jpg"]
)
def test_a_member_of_safe_names_may_be_read(member: str) -> None:
    assert member_problem(member) is None


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../svit-0.jpg", "'..' starts with a dot"),
        ("merged_images/../../svit-0.jpg", "'..' starts with a dot"),
        ("/etc/svit-0.jpg", "absolute name"),
        ("..\\..\\svit-0.jpg", "path separator"),
        ("C:/Windows/svit-0.jpg", "drive letter"),
        ("merged_images//svit-0.jpg", "is empty"),
        ("./svit-0.jpg", "'.' starts with a dot"),
        ("__MACOSX/merged_images/._svit-0.jpg", "'._svit-0.jpg' starts with a dot"),
        ("merged_images/svit\n0.jpg", "control character"),
    ],
)
def test_a_member_that_is_a_path_out_is_refused(member: str, problem: str) -> None:
    assert problem in member_problem(member)


def test_crafted_zip_members_are_rejects_naming_them_and_nothing_is_written_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    good = [row(f"svit-{i}", GOOD) for i in range(6)]
    crafted = {
        "svit-a": "../svit-a.jpg",
        "svit-b": "merged_images/../../svit-b.jpg",
        "svit-c": f"{outside}/svit-c.jpg",
        "svit-d": "..\\..\\svit-d.jpg",
        "svit-e": "C:/Windows/svit-e.jpg",
    }
    hinted = row("svit-f", GOOD) | {"img_path": "../svit-a.jpg"}  # no member of its own; its hint names a crafted one
    rows = good + [row(row_id, GOOD) for row_id in crafted] + [hinted]
    release = write_release(root / "deep" / "release", rows, images={r["id"]: jpeg() for r in good})
    with zipfile.ZipFile(release / "merged_images.zip", "w") as archive:
        for path in sorted((release / "merged_images").iterdir()):
            archive.write(path, f"merged_images/{path.name}")
            path.unlink()
        archive.writestr(zipfile.ZipInfo("__MACOSX/merged_images/._svit-0.jpg"), SECRET)
        for member in crafted.values():
            archive.writestr(zipfile.ZipInfo(member), SECRET)  # ZipInfo keeps the name as given: no sanitising
    (release / "merged_images").rmdir()
    assert {m for m in zipfile.ZipFile(release / "merged_images.zip").namelist()} >= set(crafted.values())
    work = root / "deep" / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a member extracted relative to the working directory would land under root/
    before = {p for p in tmp_path.rglob("*")}

    out = root / "deep" / "vlfeedback"
    report = build(BuildOptions(source=str(release), out_dir=out, progress=False, max_reject_rate=0.6))

    assert (report["kept"], report["reasons"]) == (6, {"unsafe_path": 6})
    rejected = {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    for row_id, member in [*crafted.items(), ("svit-f", "../svit-a.jpg")]:
        assert rejected[row_id]["reason"] == "unsafe_path"
        assert f"merged_images.zip member {member!r} is not read" in rejected[row_id]["detail"]
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new), sorted(map(str, new - {out}))
    assert list(outside.iterdir()) == [] and list(work.iterdir()) == []
    assert all(SECRET not in p.read_bytes() for p in out.rglob("*") if p.is_file())
    with open_input(release) as folder:  # a pipeline stage reading the same release: the crafted images are none
        lines = {line.row["id"]: line for line in folder.lines()}
        assert all(folder.usable(lines[row_id], None)[0] is None for row_id in crafted)
        assert folder.usable(lines["svit-0"], None)[0] is not None


def test_a_member_that_inflates_past_the_image_cap_is_rejected_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlfeedback_kit.builders import sources

    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 4096)  # the cap, scaled down: a real bomb is gigabytes
    rows = [row(f"svit-{i}", GOOD) for i in range(3)]
    release = write_release(tmp_path / "release", rows, images={r["id"]: jpeg() for r in rows})
    with zipfile.ZipFile(release / "merged_images.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((release / "merged_images").iterdir()):
            archive.write(path, f"merged_images/{path.name}")
            path.unlink()
        archive.writestr("merged_images/svit-2.jpg", b"\0" * 100_000)  # 100 KB that deflates to ~100 bytes
    (release / "merged_images").rmdir()
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, pwd=None: read.append(name) or jpeg())
    report = build(BuildOptions(source=str(release), out_dir=tmp_path / "out", progress=False, max_reject_rate=0.5))
    assert (report["kept"], report["reasons"]) == (2, {"unreadable_image": 1})
    (rejected,) = map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    assert rejected["id"] == "svit-2" and "100,000 bytes uncompressed" in rejected["detail"]
    assert "merged_images/svit-2.jpg" not in read
