"""Stage 4 of a round: ``vlfeedback train`` (an accelerate launch, in a child process) on the round's pairs, starting
from the previous round's adapter (``--init_adapter``; the first round from ``start_adapter`` or fresh LoRA), with
the DPO reference the config's ``train.reference`` names (``base`` or ``init``: the round's starting policy).

Resume: a run dir with ``checkpoint-*`` folders (a recipe saving with ``save_strategy: steps``) is resumed with
``--resume_from_checkpoint true``; one killed before its first checkpoint is trained again from the start; one with
``run_info.json`` is finished and never trained again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.rounds.config import RoundsConfig
from vlfeedback_kit.rounds.data import ROUND_CONFIG

RUN_INFO = "run_info.json"


def flag_value(value: object) -> str:
    """A YAML value as a TRL command-line value."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def train_command(config: RoundsConfig, dataset_dir: Path, run_dir: Path, start: dict) -> list[str]:
    """The ``vlfeedback train`` command of a round (``start``: the adapter the round starts from, or none)."""
    command = [sys.executable, "-m", "vlfeedback_kit.cli", "train", "--recipe", config.train.recipe]
    if config.train.accelerate:
        command += ["--accelerate", config.train.accelerate]
    command += ["--model_name_or_path", config.base_model, "--dataset_name", str(dataset_dir),
                "--dataset_config", ROUND_CONFIG, "--output_dir", str(run_dir)]  # fmt: skip
    if start["adapter"]:
        command += ["--init_adapter", start["adapter"], "--reference_policy", config.train.reference]
        if start["adapter_revision"]:
            command += ["--init_adapter_revision", start["adapter_revision"]]
    for key, value in config.train.overrides.items():
        command += [f"--{key}", flag_value(value)]
    if any(run_dir.glob("checkpoint-*")):
        command += ["--resume_from_checkpoint", "true"]
    elif run_dir.is_dir() and any(run_dir.iterdir()):  # a run killed before its first checkpoint: start it again
        command += ["--overwrite_output_dir", "true"]
    return command


def train_round(config: RoundsConfig, round_k: int, dataset_dir: Path, run_dir: Path, start: dict) -> dict:
    """Train the round's adapter into ``run_dir``; an error names the round and the tail of the trainer's output."""
    command = train_command(config, dataset_dir, run_dir, start)
    if (run_dir / RUN_INFO).is_file():
        return {"run_dir": run_dir.name, "skipped": "finished earlier"}
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (run_dir / RUN_INFO).is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"round {round_k}: training failed (exit {done.returncode}): {tail}; the command was: "
                        f"{' '.join(command[2:])}")  # fmt: skip
    return {"run_dir": run_dir.name, "resumed": "--resume_from_checkpoint" in command}
