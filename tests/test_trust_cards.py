"""What is published says only what is true: cards claim what the data records, and name no local folder.

The paper's judge, figures and licence belong to the original release only; a release judged through the kit's
pipeline names its judge (and its measured agreement), the synthetic sample says it is one. ``run_info.json``, the
model card and everything ``publish model`` uploads name local folders without locating them.

Run: pytest tests/test_trust_cards.py
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCardData
from release_factory import row, write_release
from support.launch import CLI, run, train
from support.run_dirs import write_run_dir

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.cards.dataset import (
    PAPER_JUDGE,
    dataset_facts,
    judge_statement,
    release_origin,
    render_dataset_card,
    write_dataset_card,
)
from vlfeedback_kit.cards.model import render_model_card
from vlfeedback_kit.cli import main
from vlfeedback_kit.training.tiny_model import build_tiny_model

PAPER_CLAIMS = ("gpt-4v", "GPT-4V and human preferences", "2023-era", "CC BY-NC", "76%")
ROWS = [
    row("svit-1", [(5, 5, 5), (3, 3, 4), (1, 2, 5)]),
    row("llava-2", [(4, 4, 5), (2, 1, 5)]),
]


def front_matter(text: str) -> dict:
    """The card's YAML metadata, parsed independently of huggingface_hub."""
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))


def built(root: Path, source: Path) -> Path:
    """``source`` built into ``root/built`` with its card."""
    out = root / "built"
    build(BuildOptions(source=str(source), out_dir=out, progress=False, card=write_dataset_card))
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build of a folder in the original release's layout (``vlfeedback_80k.jsonl``)."""
    root = tmp_path_factory.mktemp("original")
    return built(root, write_release(root / "release", ROWS))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build of the kit's synthetic sample."""
    from vlfeedback_kit.builders.sample import write_sample

    root = tmp_path_factory.mktemp("sample")
    write_sample(root / "release", num_instructions=20)
    return built(root, root / "release")


def test_the_origin_of_a_release_is_what_its_build_recorded() -> None:
    hub = {"source": "MMInstruction/VLFeedback", "input": "release folder /cache/x (vlfeedback_80k.jsonl + ...)"}
    local = {"source": "/data/vlf", "input": "release folder /data/vlf (vlfeedback_80k.jsonl + merged_images/)"}
    other = {"source": "/data/mine", "source_name": "mine", "input": "release folder /data/mine (mine.jsonl + x/)"}
    assert release_origin(hub) == release_origin(local) == "original"
    assert release_origin(other) == "unknown" and release_origin(other, [{"model": "gpt-4o"}]) == "pipeline"
    assert release_origin(local | {"synthetic_sample": {"seed": 0}}) == "sample"
    assert judge_statement(local) == PAPER_JUDGE
    assert "GPT-4V" not in judge_statement(other) and "`mine`" in judge_statement(other)


def test_sample_card_makes_none_of_the_papers_claims(sample: Path) -> None:
    text = (sample / "README.md").read_text()
    meta = front_matter(text)
    assert "license" not in meta and "gpt-4v" not in meta["tags"] and "synthetic" in meta["tags"]
    assert not [claim for claim in PAPER_CLAIMS if claim in text]
    assert "**No licence stated.**" in text and "**Synthetic.**" in text
    assert main(["card", "dataset", str(sample), "--license", "apache-2.0", "--pretty-name", "Kit sample"]) == 0
    text = (sample / "README.md").read_text()
    meta = front_matter(text)
    assert (meta["license"], meta["pretty_name"]) == ("apache-2.0", "Kit sample") and "\n# Kit sample\n" in text
    assert "**Licence** `apache-2.0`, as stated by the publisher" in text and "CC BY-NC" not in text


def test_publish_dataset_states_the_licence_and_name_given(sample: Path, hub, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    command = ["publish", "dataset", str(sample), "--repo", "vlf-org/sample", "--version", "0.1.0", "--dry-run"]
    assert main([*command, str(tree), "--license", "cc-by-4.0", "--pretty-name", "Kit sample"]) == 0
    meta = front_matter((tree / "README.md").read_text())
    assert (meta["license"], meta["pretty_name"]) == ("cc-by-4.0", "Kit sample")
    assert main([*command, str(tmp_path / "plain")]) == 0
    assert "license" not in front_matter((tmp_path / "plain" / "README.md").read_text())


def test_original_release_states_the_papers_figures_as_the_papers(original: Path) -> None:
    text = (original / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "cc-by-nc-4.0" and "gpt-4v" in meta["tags"] and meta["pretty_name"] == "VLFeedback"
    assert PAPER_JUDGE in text and "(the paper's figure for the original release, not" in text
    assert "No judge-vs-human agreement has been measured" not in text


def judged_copy(original: Path, target: Path, pool: list[dict] | None = None) -> Path:
    """A copy of a build with the ``judge.json`` of a release judged through the kit's pipeline."""
    shutil.copytree(original, target)
    judge = {"model": "gpt-4o-2024-08-06", "template_sha256": "ab" * 32, "items": 2}
    (target / "judge.json").write_text(json.dumps({"judges": [judge], "pool": pool or []}))
    return target


def test_pipeline_release_names_its_judge_and_its_measured_agreement(original: Path, tmp_path: Path) -> None:
    folder = judged_copy(original, tmp_path / "judged")
    text = str(render_dataset_card(folder))
    meta = front_matter(text)
    assert not [claim for claim in PAPER_CLAIMS if claim in text] and "license" not in meta
    assert "ai-feedback" in meta["tags"] and meta["pretty_name"] == "release (VLFeedback format)"
    assert "the judgement of `gpt-4o-2024-08-06`" in text
    assert "No judge-vs-human agreement has been measured for this release" in text
    overall = {"human_labels": "overall", "pairs": 400, "agree": 324, "agreement": 0.81, "ci95": [0.772, 0.848],
               "human_ties": 12, "judge_ties": 8, "unmatched": 0, "unmatched_ids": []}  # fmt: skip
    measured = {
        "judged": {"folder": "release", "file": "vlfeedback_80k.jsonl"},  # the folder this release was built from
        "labels": {"file": "labels.csv", "sha256": "0123456789ab" + "f" * 52, "sha256_of": "file", "count": 425},
        "results": {"overall": overall},
    }
    (folder / "agreement.json").write_text(json.dumps(measured))
    text = str(render_dataset_card(folder))
    assert (
        "the judge agrees with the human\n  preference on 81.0% of 400 decisive pairs (95% CI 77.2–84.8%;\n"
        "  420 human labels matched, 20 of them ties)"
    ) in text
    facts = dataset_facts(folder)["agreement"]
    cited = "labels `labels.csv` (sha256 0123456789ab…, 425 labels) against `release/vlfeedback_80k.jsonl`"
    assert facts["citation"] == cited and f"measured with {cited}." in " ".join(text.split())
    assert (facts["labels_file"], facts["labels_count"]) == ("labels.csv", 425)
    for stale in (
        {"overall": overall},  # the bare `--json` output: what was it measured on?
        measured | {"judged": {"folder": "another-release", "file": "vlfeedback.jsonl"}},  # kept from another build
        {"overall": {"pairs": 3}},
    ):
        (folder / "agreement.json").write_text(json.dumps(stale))
        assert main(["card", "dataset", str(folder)]) == 2


def test_pool_table_shows_each_members_adapter_by_name(original: Path, tmp_path: Path) -> None:
    settings = {"kind": "transformers", "model": "Qwen/Qwen2-VL-2B-Instruct", "dtype": "bfloat16",
                "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "responses": 2}  # fmt: skip
    pool = [
        {"member": "qwen-base", **settings},
        {"member": "qwen-silkie", **settings, "adapter": str(tmp_path / "runs" / "silkie")},
        {"member": "qwen-hub", **settings, "adapter": "vlf-org/silkie"},
    ]
    text = str(render_dataset_card(judged_copy(original, tmp_path / "judged", pool)))
    rows = [line.split(" | ")[2] for line in text.splitlines() if line.startswith("| `qwen-")]
    assert rows == [
        "`Qwen/Qwen2-VL-2B-Instruct`",
        "`Qwen/Qwen2-VL-2B-Instruct` + adapter `silkie (local)`",
        "`Qwen/Qwen2-VL-2B-Instruct` + adapter `vlf-org/silkie`",
    ]
    assert str(tmp_path) not in text


def test_card_yaml_carries_dataset_info_as_datasets_writes_it(sample: Path) -> None:
    from datasets import Features
    from datasets.info import DatasetInfosDict

    report = json.loads((sample / "build_report.json").read_text())
    meta = front_matter((sample / "README.md").read_text())
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCardData(**meta))
    assert sorted(infos) == sorted(report["splits"]) == sorted(i["config_name"] for i in meta["dataset_info"])
    for config, splits in report["splits"].items():
        info = infos[config]
        assert {name: s.num_examples for name, s in info.splits.items()} == splits
        assert all(s.num_bytes > 0 for s in info.splits.values())
        files = [sample / f for split in splits for f in report["files"][f"{config}/{split}"]]
        assert info.download_size == sum(f.stat().st_size for f in files)
        assert info.features == Features.from_arrow_schema(pq.read_schema(files[0]))


def test_model_card_of_a_sample_run_says_so(tmp_path: Path) -> None:
    base = build_tiny_model("qwen2_vl", tmp_path / "base")
    dataset = {"name": "vlfeedback", "local": True, "config": "pairs", "revision": "local-0", "origin": "sample"}
    run_dir = write_run_dir(tmp_path / "run", base, adapter=True, dataset=dataset)
    card = render_model_card(run_dir)
    text = str(card)
    assert "rated by an AI judge" not in text and "the kit's synthetic sample (`vlfeedback sample`)" in text
    assert "CC BY-NC" not in text and card.data.license is None and card.data.datasets is None
    judged = dataset | {"origin": "pipeline", "judges": ["gpt-4o"]}
    text = str(render_model_card(write_run_dir(tmp_path / "judged", base, adapter=True, dataset=judged)))
    assert "rated by an AI judge (`gpt-4o`, through the kit's pipeline)" in text and "synthetic" not in text


def tree_mentions(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    )


def test_publish_of_an_older_run_dir_locates_nothing(tmp_path: Path, capsys) -> None:
    """A run recorded by older code (absolute paths in run_info.json) and PEFT's absolute base path: rewritten."""
    base = build_tiny_model("qwen2_vl", tmp_path / "base")
    dataset = {"name": str(tmp_path / "vlfeedback"), "config": "pairs", "revision": "local-fedcba9876543210"}
    run_dir = write_run_dir(tmp_path / "run", base, adapter=True, base_model=str(base), dataset=dataset)
    (run_dir / "resolved_config.yaml").write_text(
        yaml.safe_dump({"ScriptArguments": {"dataset_name": dataset["name"]}})
    )
    assert tree_mentions(run_dir, str(tmp_path))  # what the upload must not carry
    out = tmp_path / "dry"
    assert main(["publish", "model", str(run_dir), "--repo", "vlf-org/silkie", "--version", "1.0.0", "--dry-run",
                 str(out)]) == 0  # fmt: skip
    assert tree_mentions(out, str(tmp_path)) == []
    info = json.loads((out / "run_info.json").read_text())
    assert info["base_model"] == {"name": "base", "local": True} and info["dataset"]["name"] == "vlfeedback"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"

    (run_dir / "notes.txt").write_text(f"trained from {base}\n")
    assert main(["publish", "model", str(run_dir), "--repo", "vlf-org/silkie", "--version", "1.0.0", "--dry-run",
                 str(tmp_path / "dry2")]) == 2  # fmt: skip
    assert f"notes.txt names a local folder ({tmp_path})" in capsys.readouterr().err
    assert not (tmp_path / "dry2").exists()


def test_a_trained_run_and_its_publish_dry_run_name_no_local_folder(tmp_path: Path) -> None:
    """The real thing: `vlfeedback train` on the sample with absolute paths, then `publish model --dry-run`."""
    run([*CLI, "sample", "--out", str(tmp_path / "release"), "--num-instructions", "8"], tmp_path)
    run([*CLI, "build", "--source", str(tmp_path / "release"), "--out", str(tmp_path / "vlfeedback"), "--quiet"],
        tmp_path)  # fmt: skip
    run([*CLI, "tiny-model", "--family", "qwen2_vl", "--out", str(tmp_path / "tiny")], tmp_path)
    run_dir = tmp_path / "runs" / "silkie"
    train(tmp_path, "--model_name_or_path", str(tmp_path / "tiny"), "--dataset_name", str(tmp_path / "vlfeedback"),
          "--output_dir", str(run_dir), "--max_steps", "1")  # fmt: skip
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["base_model"] == {"name": "tiny", "local": True}
    assert info["dataset"] | {"revision": None} == {"name": "vlfeedback", "local": True, "config": "pairs",
                                                     "split": "train", "revision": None, "requested_revision": None,
                                                     "origin": "sample"}  # fmt: skip
    for name in ("run_info.json", "README.md", "resolved_config.yaml", "audit.json"):
        assert str(tmp_path) not in (run_dir / name).read_text(), name
    assert "the kit's synthetic sample" in (run_dir / "README.md").read_text()
    out = tmp_path / "dry-run"
    done = run([*CLI, "publish", "model", str(run_dir), "--repo", "vlf-org/silkie", "--version", "0.1.0",
                "--dry-run", str(out)], tmp_path)  # fmt: skip
    assert "nothing was uploaded" in done.stdout
    assert tree_mentions(out, str(tmp_path)) == [] and (out / "adapter_config.json").is_file()
