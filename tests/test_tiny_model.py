"""The tiny-model factory: offline reload and generation per family, determinism, and one real TRL DPO step.

Run: pytest tests/test_tiny_model.py
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from support.dpo import cpu_dpo_config

from vlfeedback_kit.builders.features import ASPECTS, PAIR_FEATURES
from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.training.tiny_model import FAMILIES, build_tiny_model

RELOAD_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    from PIL import Image, ImageDraw
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(image).ellipse((100, 100, 300, 300), fill="red")
    messages = [{"role": "user", "content": [
        {"type": "image", "text": None, "image": image}, {"type": "text", "text": "How many circles?"}]}]
    reports = {}
    for folder in sys.argv[1:]:
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder)
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        reports[folder] = {
            "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
            "new_tokens": output.shape[1] - inputs["input_ids"].shape[1],
            "prompt": processor.decode(inputs["input_ids"][0]),
        }
    print(json.dumps(reports))
    """
)
"""Loads each folder given on the command line with the Auto classes, chats about a 448 px image, generates."""

PROMPT = [
    {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "How many circles?"}]}
]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model per family, built once for the module."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


def circles_jpeg(count: int, size: tuple[int, int]) -> bytes:
    """A JPEG of ``size`` (width, height) with ``count`` red circles."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i in range(count):
        draw.ellipse((20 + 100 * i, 50, 100 + 100 * i, 130), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def pair_row(index: int) -> dict:
    """A pair row exactly as the kit's pairing configs store it; image sizes differ between rows, as in VLFeedback."""
    message = [{"role": "assistant", "content": [{"type": "text", "text": f"There are {index + 1} circles."}]}]
    wrong = [{"role": "assistant", "content": [{"type": "text", "text": "There are no circles in the image."}]}]
    return {
        "id": f"svit-counting-{index}",
        "source": "SVIT",
        "images": [{"bytes": circles_jpeg(index + 1, (448 - 128 * index, 448)), "path": None}],
        "prompt": PROMPT,
        "chosen": message,
        "rejected": wrong,
        "chosen_model": "gpt-4v",
        "rejected_model": "fuyu-8b",
        "chosen_ratings": dict.fromkeys(ASPECTS, 5),
        "rejected_ratings": {"Helpfulness": 2, "Visual Faithfulness": 1, "Ethical Considerations": None},
        "chosen_score": 5.0,
        "rejected_score": 1.5,
        "margin": 3.5,
    }


@pytest.fixture(scope="module")
def offline_reports(tiny_models: dict[str, Path]) -> dict[str, dict]:
    """What a fresh ``HF_HUB_OFFLINE=1`` process saw when loading every tiny model (one process for all: imports)."""
    folders = [str(tiny_models[family]) for family in FAMILIES]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, *folders], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    return {family: reports[folder] for family, folder in zip(FAMILIES, folders, strict=True)}


@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_offline_in_a_fresh_process_and_generates(
    tiny_models: dict[str, Path], offline_reports: dict[str, dict], family: str
) -> None:
    report = offline_reports[family]
    assert report["image_tokens"] == (136 if family == "llava_onevision" else 64)  # OneVision adds an anyres crop
    assert 1 <= report["new_tokens"] <= 8
    assert "How many circles?" in report["prompt"]
    assert json.loads((tiny_models[family] / "tiny_model.json").read_text())["family"] == family


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (
            "qwen2_vl",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>How many circles?<|im_end|>\n"
            "<|im_start|>assistant\nTwo.<|im_end|>\n",
        ),
        ("llava", "USER: <image>\nHow many circles? ASSISTANT: Two. "),
    ],
)
def test_chat_template_renders_arrow_content_parts(tiny_models: dict[str, Path], family: str, expected: str) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models[family])
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "Two."}]}]
    assert processor.apply_chat_template(PROMPT + answer, tokenize=False) == expected


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    first, again, other = (
        build_tiny_model("qwen2_vl", tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_cli_verb_builds_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["tiny-model", "--family", "llava", "--out", str(tmp_path / "llava"), "--seed", "3"]) == 0
    assert "AutoProcessor.from_pretrained" in capsys.readouterr().out
    assert json.loads((tmp_path / "llava" / "tiny_model.json").read_text())["seed"] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_one_trl_dpo_step_on_pair_rows(tiny_models: dict[str, Path], family: str, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    dataset = Dataset.from_list([pair_row(i) for i in range(2)], features=PAIR_FEATURES)
    processor = AutoProcessor.from_pretrained(tiny_models[family])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models[family])
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    args = cpu_dpo_config(tmp_path, max_length=256)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()

    loss = trainer.state.log_history[0]["loss"]
    assert math.isfinite(loss)
    assert loss == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    changed = {name for name, param in model.named_parameters() if not torch.equal(before[name], param.detach())}
    decoder = {name for name in before if name.startswith(("model.language_model.", "lm_head."))}
    assert decoder <= changed
    assert changed - decoder, "the vision side received no update"


def test_cli_verb_refuses_an_existing_model_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "llava"
    assert cli_main(["tiny-model", "--family", "llava", "--out", str(out), "--seed", "3"]) == 0
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli_main(["tiny-model", "--family", "llava", "--out", str(out), "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == weights  # untouched
    assert cli_main(["tiny-model", "--family", "llava", "--out", str(out), "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "tiny_model.json").read_text())["seed"] == 4
