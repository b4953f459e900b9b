"""A tiny Qwen2-VL base and a Silkie-like LoRA run dir whose up-projections are non-zero (so Silkie differs from
its base), built offline in seconds."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_silkie(root: Path, family: str = "qwen2_vl", targets: str | None = None,
                **run_info: object) -> tuple[Path, Path]:
    """(base model folder, adapter run dir with processor and run_info.json naming the base), of any tiny-model
    family; LoRA on the language model's attention only, as the training recipes target it (``targets``: another
    PEFT ``target_modules`` pattern)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.freeze import language_lora_targets
    from vlfeedback_kit.training.tiny_model import build_tiny_model

    base = build_tiny_model(family, root / "base")
    targets = targets or language_lora_targets(("q_proj", "v_proj", "o_proj"))
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=32, target_modules=targets))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(root / "run")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "run")
    (root / "run" / "run_info.json").write_text(json.dumps({**run_info, "base_model": str(base)}))
    return base, root / "run"
