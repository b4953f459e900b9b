"""TRL settings shared by the tests that take real DPO steps on the CPU."""

from __future__ import annotations

from pathlib import Path


def cpu_dpo_config(output_dir: Path, **overrides: object):
    """A ``SilkieDPOConfig`` (TRL's ``DPOConfig`` + the kit's fields) for a few CPU steps: fp32, no checkpointing."""
    from vlfeedback_kit.training.config import SilkieDPOConfig

    settings = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "max_length": None,
        "activation_checkpointing": False,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
    }
    return SilkieDPOConfig(**(settings | overrides))
