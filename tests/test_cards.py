"""Dataset and model cards: every number from the data, valid Hub metadata, plots on disk, a quick start that runs.

Run: pytest tests/test_cards.py
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard
from PIL import Image
from release_factory import jpeg, row, write_release
from support.run_dirs import BASE_MODEL_ID, EVAL_RESULTS, write_run_dir

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.cards.changelog import previous_entries
from vlfeedback_kit.cards.dataset import (
    PAPER_JUDGE,
    model_scores,
    rating_distributions,
    rating_table,
    render_dataset_card,
    write_dataset_card,
)
from vlfeedback_kit.cards.model import EXAMPLE_IMAGE_URL, render_model_card
from vlfeedback_kit.cli import main
from vlfeedback_kit.training.tiny_model import build_tiny_model

IMAGE = jpeg((20, 120, 220), size=40)
ROWS = [
    row("svit-1", [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]),
    row("llava-2", [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]),
    row("lrv-3", [(4, "n/a", 5), (2, 1, 5)]),
]
"""Hand-checked: model-0 rates H 5,5,4 · VF 5,5,null · E 5,5,5; model-1 H 3,3,2 · VF 3,3,1 · E 4,4,5."""
RUNNER = "import runpy, sys\nfor path in sys.argv[1:]:\n    runpy.run_path(path, run_name='__main__')\n"


def front_matter(text: str) -> dict:
    """The YAML between the leading ``---`` fences, parsed independently of huggingface_hub."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "card has no YAML front matter"
    return yaml.safe_load(match.group(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder built from three hand-made rows (with one unparseable rating), with an extra pairing config."""
    from vlfeedback_kit.builders.pairing import PRESETS

    root = tmp_path_factory.mktemp("cards")
    release = write_release(root / "release", ROWS, images={r["id"]: IMAGE for r in ROWS})
    out = root / "vlfeedback"
    build(
        BuildOptions(
            source=str(release),
            out_dir=out,
            policies={"best-vs-worst": PRESETS["best-vs-worst"]},
            progress=False,
            card=write_dataset_card,
        )
    )
    return out


def test_statistics_are_computed_from_the_raw_parquet(folder: Path) -> None:
    responses = rating_table(sorted((folder / "data" / "raw").glob("*.parquet")))
    assert responses.num_rows == 10
    assert rating_distributions(responses)["Helpfulness"] == {"1": 2, "2": 3, "3": 2, "4": 1, "5": 2, "null": 0}
    assert rating_distributions(responses)["Visual Faithfulness"] == {
        "1": 1,
        "2": 4,
        "3": 2,
        "4": 0,
        "5": 2,
        "null": 1,
    }
    scores = {r["model"]: r for r in model_scores(responses)}
    assert scores["model-0"]["responses"] == 3
    assert scores["model-0"]["means"] == pytest.approx(
        {"Helpfulness": 14 / 3, "Visual Faithfulness": 5.0, "Ethical Considerations": 5.0}
    )
    assert scores["model-1"]["means"]["Visual Faithfulness"] == pytest.approx(7 / 3)
    assert [r["model"] for r in model_scores(responses)] == ["model-0", "model-1", "model-2", "model-3"]


def test_dataset_card_states_what_the_folder_holds(folder: Path) -> None:
    text = (folder / "README.md").read_text()  # written by build through render_dataset_card
    report = json.loads((folder / "build_report.json").read_text())
    policies = json.loads((folder / "pairing_policies.json").read_text())
    assert "| model-0 | 3 | 4.67 | 5.00 | 5.00 | 4.89 |" in text
    assert "| Visual Faithfulness | 10.0% | 40.0% | 20.0% | 0.0% | 20.0% | 10.0% |" in text
    for source in ("SVIT", "LLaVA", "LRV"):
        assert f"| {source} | 1 | 33.3% |" in text
    for config, record in policies.items():
        assert f"| `{config}` | {record['policy']['strategy']} | mean |" in text
        assert f"`{record['fingerprint']}` | {record['counts']['pairs']} |" in text
    assert f"train: {report['splits']['pairs']['train']}" in text
    assert "| `completions` | `list<{model: string, response: string, annotations: {Helpfulness: {Rating: int8" in text
    assert "| `images` | `list<image>` |" in text
    assert PAPER_JUDGE in text
    assert 'load_dataset("ORG/NAME", "best-vs-worst")' in text and "DPOTrainer(" in text
    assert "arXiv:2312.10665" in text and "eprint    = {2410.09421}" in text
    assert "## Changelog" in text and previous_entries(text) == ""
    assert "Judge bias" in text and "CC BY-NC 4.0" in text
    assert '"id": "svit-1"' in text and (folder / "assets" / "example.jpg").read_bytes() == IMAGE


def test_dataset_card_metadata_is_valid_for_the_hub(folder: Path, hub) -> None:
    card = DatasetCard.load(folder / "README.md")
    card.validate(repo_type="dataset")  # the Hub's /api/validate-yaml (here: the loopback fake)
    assert len(hub.calls(r"/api/validate-yaml$", "POST")) == 1
    meta = front_matter(str(card))
    assert meta["license"] == "cc-by-nc-4.0" and meta["size_categories"] == "n<1K"
    assert {"image-text-to-text", "visual-question-answering"} <= set(meta["task_categories"])
    assert {"dpo", "vlfeedback"} <= set(meta["tags"])
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert list(configs) == ["raw", "pairs", "best-vs-worst"] and configs["pairs"]["default"] is True
    (raw_files,) = configs["raw"]["data_files"]
    assert raw_files["split"] == "train"
    assert raw_files["path"] == [p.relative_to(folder).as_posix() for p in sorted((folder / "data" / "raw").iterdir())]
    assert DatasetCardData(**card.data.to_dict()).to_dict() == card.data.to_dict() == meta


def test_rating_plots_are_pngs_shown_in_the_card(folder: Path) -> None:
    text = (folder / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*rating distribution\]\((assets/ratings-[a-z-]+\.png)\)", text)
    assert len(shown) == len(ASPECTS)
    for path in shown:
        with Image.open(folder / path) as image:
            assert image.format == "PNG" and image.size[0] > 200
    assert "![example image](assets/example.jpg)" in text


def test_judge_json_replaces_the_paper_statement(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    judge = {"model": "gpt-4o-2024-08-06", "template_sha256": "ab" * 32, "items": 3}
    (copy / "judge.json").write_text(json.dumps({"judges": [judge]}))
    assert main(["card", "dataset", str(copy), "--repo", "vlf-org/vlfeedback"]) == 0
    text = (copy / "README.md").read_text()
    assert f"| `gpt-4o-2024-08-06` | `{'ab' * 32}` | 3 |" in text and PAPER_JUDGE not in text
    assert 'load_dataset("vlf-org/vlfeedback", "pairs")' in text
    card = render_dataset_card(copy, repo_id="vlf-org/vlfeedback", revision="v2.0.0", changelog="### v2.0.0 — x")
    assert 'load_dataset("vlf-org/vlfeedback", "raw", revision="v2.0.0")' in str(card)
    assert previous_entries(str(card)) == "### v2.0.0 — x"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model, a LoRA run dir with eval results, and a merged run dir without curves."""
    root = tmp_path_factory.mktemp("runs")
    base = build_tiny_model("qwen2_vl", root / "base")
    adapter = write_run_dir(root / "silkie-lora", base, adapter=True)
    (root / "eval.json").write_text(json.dumps(EVAL_RESULTS))
    merged = write_run_dir(root / "silkie-merged", base, adapter=False, curves=False)
    return {"base": base, "adapter": adapter, "merged": merged, "eval": root / "eval.json"}


def test_adapter_card_metadata_and_eval_results(runs: dict[str, Path], hub) -> None:
    assert main(["card", "model", str(runs["adapter"]), "--eval-results", str(runs["eval"])]) == 0
    card = ModelCard.load(runs["adapter"] / "README.md")
    card.validate(repo_type="model")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("peft", "image-text-to-text", "cc-by-nc-4.0")
    assert data.base_model == BASE_MODEL_ID and data.datasets == ["vlf-org/vlfeedback"]
    assert data.training_data == {"name": "vlf-org/vlfeedback", "config": "pairs", "revision": "v1.0.0"}
    assert {"dpo", "trl", "vlfeedback", "silkie", "vision"} <= set(data.tags)
    mme, mmhal = data.eval_results
    assert (mme.dataset_name, mme.metric_name, mme.metric_value) == ("MME", "MME perception", 1539.6)
    assert mme.source_url == "https://arxiv.org/abs/2312.10665" and mmhal.metric_value == 3.02
    meta = front_matter(str(card))
    assert meta["model-index"][0]["name"] == "silkie-lora"
    text = str(card)
    assert "| global batch size | 16 |" in text and "| hardware | 1x CPU (test fixture) |" in text
    assert '| `lora_target_modules` | `["q_proj", "v_proj"]` |' in text and "| `train_loss` | 0.6931 |" in text
    assert "![Training loss, reward accuracy and reward margin](training_curves.png)" in text
    assert "| MME | MME perception | 1539.6 | https://arxiv.org/abs/2312.10665 |" in text


def test_merged_card_without_curves_or_eval(runs: dict[str, Path]) -> None:
    card = render_model_card(runs["merged"], repo_id="vlf-org/silkie", revision="v1.0.0")
    assert card.data.library_name == "transformers" and card.data.base_model_relation == "finetune"
    assert card.data.eval_results is None and "model-index" not in front_matter(str(card))
    assert "No training curves were saved" in str(card) and "No evaluation results were supplied" in str(card)
    assert 'AutoModelForImageTextToText.from_pretrained(model_id, revision="v1.0.0"' in str(card)


def test_model_card_errors_name_the_problem(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["card", "model", str(tmp_path)]) == 2
    assert "has no run_info.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"dataset_name": "MME", "metric_value": 1.0}]}))
    assert main(["card", "model", str(runs["merged"]), "--eval-results", str(bad)]) == 2
    assert "results[0] lacks task_type, dataset_type, metric_type" in capsys.readouterr().err


def quick_start(card_text: str, substitutions: dict[str, str]) -> str:
    """The card's quick-start code with each ``name = "..."`` line pointed at a local path."""
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", card_text, re.S).group(1)
    for name, value in substitutions.items():
        code, count = re.subn(rf'^{name} = ".*"$', f"{name} = {value!r}", code, flags=re.M)
        assert count == 1, f"the quick start has no single `{name} = ...` line"
    return code


def test_quick_starts_run_offline_on_the_saved_folders(runs: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "image.jpg"
    Image.open(io.BytesIO(jpeg((200, 30, 30), size=96))).save(image)
    adapter_card = render_model_card(runs["adapter"], repo_id="vlf-org/silkie", revision="v1.0.0")
    merged_card = render_model_card(runs["merged"])
    assert EXAMPLE_IMAGE_URL in str(adapter_card) and "PeftModel.from_pretrained(model, model_id" in str(adapter_card)
    scripts = []
    for name, card, paths in (
        ("adapter", adapter_card, {"model_id": runs["adapter"], "base_model_id": runs["base"]}),
        ("merged", merged_card, {"model_id": runs["merged"]}),
    ):
        script = tmp_path / f"{name}.py"
        script.write_text(quick_start(str(card), {**{k: str(v) for k, v in paths.items()}, "image": str(image)}))
        scripts.append(str(script))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *scripts],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, textwrap.shorten(done.stderr[-3000:], 3000)


def test_card_dataset_on_a_folder_never_built_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "vlfeedback_kit.cli", "card", "dataset", str(tmp_path / "notes")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"vlfeedback card: error: {tmp_path / 'notes'} is not a folder written by `vlfeedback build` "
        "(no build_report.json, pairing_policies.json)"
    ]
    assert list((tmp_path / "notes").iterdir()) == []


def test_card_of_the_synthetic_sample_says_so_and_sizes_by_the_largest_config(tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    from vlfeedback_kit.builders.pairing import PRESETS
    from vlfeedback_kit.builders.sample import write_sample
    from vlfeedback_kit.cards.changelog import first_release_entry, read_snapshot
    from vlfeedback_kit.cards.plots import distribution_title

    write_sample(tmp_path / "release", num_instructions=300)
    out = tmp_path / "vlfeedback"
    policies = {"length-balanced": PRESETS["length-balanced"], "margin-1": PRESETS["margin-1"]}
    report = build(
        BuildOptions(
            source=str(tmp_path / "release"), out_dir=out, policies=policies, progress=False, card=write_dataset_card
        )
    )
    assert sum(report["splits"]["raw"].values()) == 300 and sum(report["splits"]["pairs"].values()) == 1464
    text = (out / "README.md").read_text()
    assert front_matter(text)["size_categories"] == "1K<n<10K"
    assert "| `pairs` (default) | one preference pair (all-pairs, mean — the paper's rule) |" in text
    assert "| `length-balanced` | one preference pair (all-pairs, mean, max_length_ratio=1.5) |" in text
    assert "| `margin-1` | one preference pair (all-pairs, mean, min_margin=1.0) |" in text
    assert PAPER_JUDGE not in text and "GPT-4V (gpt-4-vision" not in text
    assert "None: this folder was built from the kit's synthetic sample (`vlfeedback sample`, seed 0" in text
    entry = first_release_entry("v1.0.0", "2026-11-30", read_snapshot(LocalFileSystem(), out.as_posix(), "new"))
    assert "synthetic sample" in entry and PAPER_JUDGE not in entry
    counts = {"1": 1, "2": 2, "3": 0, "4": 3, "5": 2, "null": 2}
    assert distribution_title("Helpfulness", counts) == "Helpfulness: 8 rated of 10 responses"


def test_local_run_card_names_local_folders_without_locating_them(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run trained on a local base and a local dataset: the card names both folders (no path of this machine, no
    Hub metadata), and its quick start runs from anywhere once given their paths."""
    base, dataset = runs["base"].resolve(), tmp_path / "vlfeedback"
    run = write_run_dir(
        tmp_path / "silkie-local",
        base,
        adapter=True,
        base_model={"name": base.name, "local": True},
        base_model_revision="local-0123456789abcdef",
        dataset={"name": dataset.name, "local": True, "config": "pairs", "revision": "local-fedcba9876543210"},
    )
    card = render_model_card(run)
    text, meta = str(card), front_matter(str(card))
    assert "base_model" not in meta and "datasets" not in meta and card.data.base_model is None
    assert f"a local model, `{base.name}` (a local folder, not on the Hub" in text and str(tmp_path) not in text
    assert str(base) not in text and f"a local dataset, `{dataset.name}` (a local folder, not on the Hub" in text
    assert 'model_id = "silkie-local"' in text and f'base_model_id = "{base.name}"' in text
    image = tmp_path / "image.jpg"
    Image.open(io.BytesIO(jpeg((200, 30, 30), size=96))).save(image)
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start(text, {"model_id": str(run), "base_model_id": str(base), "image": str(image)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, textwrap.shorten(done.stderr[-3000:], 3000)


def test_relative_local_base_is_not_a_hub_id(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """An older run_info.json names its local base relative to where training ran (``runs/tiny-qwen2-vl``)."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny-qwen2-vl").symlink_to(runs["base"].resolve())
    run = write_run_dir(tmp_path / "runs" / "silkie-tiny", runs["base"], adapter=True, base_model="runs/tiny-qwen2-vl")
    monkeypatch.chdir(tmp_path)
    card = render_model_card(run)
    assert card.data.base_model is None and getattr(card.data, "base_model_relation", None) is None
    assert "https://huggingface.co/runs/tiny-qwen2-vl" not in str(card)
    assert 'base_model_id = "tiny-qwen2-vl"' in str(card) and 'model_id = "silkie-tiny"' in str(card)
    assert str(tmp_path) not in str(card)


def test_published_card_names_hub_repos_and_revisions(runs: dict[str, Path], tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    run = write_run_dir(tmp_path / "silkie-hub", runs["base"], adapter=True, base_model_revision=sha)
    card = render_model_card(run, repo_id="vlf-org/silkie", revision="v1.2.0")
    text = str(card)
    assert card.data.base_model == BASE_MODEL_ID and card.data.datasets == ["vlf-org/vlfeedback"]
    assert card.data.base_model_relation == "adapter"
    assert f"[`{BASE_MODEL_ID}`](https://huggingface.co/{BASE_MODEL_ID}) (revision `{sha}`)" in text
    assert 'model_id = "vlf-org/silkie"' in text and f'base_model_id = "{BASE_MODEL_ID}"' in text
    assert f'from_pretrained(base_model_id, revision="{sha}"' in text
    assert 'PeftModel.from_pretrained(model, model_id, revision="v1.2.0")' in text
    assert str(tmp_path) not in text
