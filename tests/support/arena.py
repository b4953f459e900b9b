"""A tiny Silkie for the arena tests: the kit's tiny Qwen2-VL and a LoRA whose up-projections are non-zero."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_silkie(root: Path) -> tuple[Path, Path]:
    """Build the tiny base under ``root/base`` and a run dir with an adapter under ``root/run``; returns both."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.tiny_model import build_tiny_model

    base = build_tiny_model("qwen2_vl", root / "base")
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"]))  # fmt: skip
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(root / "run")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "run")
    (root / "run" / "run_info.json").write_text(json.dumps({"base_model": str(base)}))
    return base, root / "run"


STUB_SPACES = '''"""Stand-in for Hugging Face's `spaces`: GPU records what it decorates and each call of it."""
import functools, inspect
decorated, called = [], []
def GPU(task=None, *, duration=60, **kwargs):
    def wrap(fn):
        decorated.append({"name": fn.__name__, "duration": duration, "generator": inspect.isgeneratorfunction(fn)})
        @functools.wraps(fn)
        def run(*args, **kw):
            called.append(fn.__name__)
            yield from fn(*args, **kw)
        return run
    return wrap(task) if callable(task) else wrap
'''


def stub_spaces(folder: Path) -> Path:
    """Write the stub ``spaces`` package under ``folder`` (put ``folder`` on sys.path); returns ``folder``."""
    (folder / "spaces").mkdir(parents=True, exist_ok=True)
    (folder / "spaces" / "__init__.py").write_text(STUB_SPACES)
    return folder
