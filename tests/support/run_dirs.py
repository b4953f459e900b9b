"""Run dirs as the training code writes them (the RUN_DIR contract), fabricated offline from a tiny random VLM.

base = build_tiny_model("qwen2_vl", tmp / "base")
adapter_run = write_run_dir(tmp / "run", base, adapter=True)   # LoRA adapter + processor + run_info.json
merged_run = write_run_dir(tmp / "merged", base, adapter=False)  # full weights + processor + run_info.json
"""

from __future__ import annotations

import json
from pathlib import Path

BASE_MODEL_ID = "Qwen/Qwen2-VL-2B-Instruct"
"""What ``run_info.json`` names as the base: a Hub id, as in a real run; tests swap in the tiny local model."""

EVAL_RESULTS = {
    "results": [
        {
            "task_type": "image-text-to-text",
            "dataset_type": "lmms-lab/MME",
            "dataset_name": "MME",
            "metric_type": "perception",
            "metric_name": "MME perception",
            "metric_value": 1539.6,
            "source": "https://arxiv.org/abs/2312.10665",
        },
        {
            "task_type": "image-text-to-text",
            "dataset_type": "Shengcao1006/MMHal-Bench",
            "dataset_name": "MMHal-Bench",
            "metric_type": "score",
            "metric_name": "MMHal-Bench score",
            "metric_value": 3.02,
            "source": "vlfeedback eval",
        },
    ]
}


def run_info(adapter: bool, dataset: str = "vlf-org/vlfeedback", revision: str | None = "v1.0.0") -> dict:
    """The ``run_info.json`` of a short Silkie-recipe run."""
    return {
        "base_model": BASE_MODEL_ID,
        "base_model_revision": None,
        "dataset": {"name": dataset, "config": "pairs", "revision": revision},
        "recipe": "recipes/silkie_qwen2_vl_lora.yaml",
        "hyperparameters": {
            "beta": 0.1,
            "learning_rate": 1e-5,
            "lr_scheduler_type": "cosine",
            "num_train_epochs": 3,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 8,
            "lora_r": 64,
            "lora_alpha": 16,
            "lora_target_modules": ["q_proj", "v_proj"],
        },
        "hardware": "1x CPU (test fixture)",
        "num_processes": 1,
        "global_batch_size": 16,
        "peft": adapter,
        "merged": not adapter,
        "metrics": {"train_loss": 0.6931, "rewards/accuracies": 0.5, "rewards/margins": 0.0123},
        "library_versions": {"trl": "1.16.0", "transformers": "5.24.0", "peft": "0.21.2"},
        "created_at": "2026-11-26T12:00:00Z",
    }


def write_curves(path: Path) -> Path:
    """A small loss / reward-accuracy / margin PNG, as the training code saves it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 2))
    for axes, (name, values) in zip(
        figure.subplots(1, 3), {"loss": [0.69, 0.6, 0.5], "accuracy": [0.5, 0.6, 0.8], "margin": [0, 0.2, 0.5]}.items()
    ):
        axes.plot(values)
        axes.set_title(name)
    figure.savefig(path)
    return path


def write_run_dir(out: Path, base: Path, adapter: bool, curves: bool = True, **info: object) -> Path:
    """A run dir: a LoRA adapter over ``base`` (or ``base``'s full weights), its processor and ``run_info.json``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForImageTextToText.from_pretrained(base)
    if adapter:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    (out / "run_info.json").write_text(json.dumps({**run_info(adapter), **info}, indent=2))
    if curves:
        write_curves(out / "training_curves.png")
    return out
