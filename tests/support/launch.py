"""Running the ``vlfeedback`` CLI in a subprocess (offline, no progress bars) and reading what a run wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

CLI = [sys.executable, "-m", "vlfeedback_kit.cli"]


def attempt(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = attempt(command, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train(workspace: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`vlfeedback train --recipe tiny` (an accelerate launch on the CPU) with TRL flag overrides."""
    return run([*CLI, "train", "--recipe", "tiny", "--accelerate", "cpu", *overrides], workspace)


def state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def parameters(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return {k: v.detach() for k, v in AutoModelForImageTextToText.from_pretrained(folder).named_parameters()}
