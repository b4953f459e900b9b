"""Scale-out step benchmark on the CPU: the tiny recipe's DPO step, 1 process against 2 FSDP2 processes (gloo).

    python -m vlfeedback_kit.training.bench_scale --steps 6

Both runs train the tiny random Qwen2-VL on the embedded sample (built in a temporary folder) with the same global
batch (8 pairs: 4 per device x 2 accumulation x 1 process, against 2 x 2 x 2), fp32, the tiny recipe's speedups.
Each is a real ``accelerate launch`` of ``training/dpo.py`` (``cpu.yaml``; ``fsdp2.yaml --num_processes 2``); the
step time is the trainer's ``train_runtime`` over the steps (the first step's set-up included), so the numbers
compare the two launches, not the GPU gain FSDP2 is for: on a CPU the 2 processes share its cores and add gloo
all-gathers. ``--threads`` sets ``OMP_NUM_THREADS`` of every process (default 1, what torchrun gives each of
several processes; a lone process would otherwise take every core, and on a shared VM its threads wait on each
other). Each result is appended to ``benchmarks/results/training.bench_scale.jsonl`` (:mod:`.benchlog`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser

HERE = Path(__file__).parent
GLOBAL_BATCH = 8


def _run(command: list[str], cwd: Path, threads: int = 1) -> None:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stderr[-2000:]}")


def prepare(root: Path) -> None:
    """The embedded sample built into ``root/vlfeedback`` and the tiny Qwen2-VL in ``root/runs``."""
    cli = [sys.executable, "-m", "vlfeedback_kit.cli"]
    _run([*cli, "sample", "--out", "sample_release", "--num-instructions", "12"], root)
    _run([*cli, "build", "--source", "sample_release", "--out", "vlfeedback", "--quiet"], root)
    _run([*cli, "tiny-model", "--family", "qwen2_vl", "--out", "runs/tiny-qwen2-vl"], root)


def launch(root: Path, name: str, steps: int, threads: int) -> dict:
    """One timed run: ``one-process`` (cpu.yaml, batch 4) or ``fsdp2-2proc`` (fsdp2.yaml, 2 processes, batch 2)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if name == "one-process":
        launcher += ["--config_file", str(HERE / "accelerate" / "cpu.yaml")]
        batch = ["--per_device_train_batch_size", "4"]
    else:
        launcher += ["--config_file", str(HERE / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                     "--mixed_precision", "no", "--main_process_port", "0"]  # fmt: skip
        batch = ["--per_device_train_batch_size", "2"]
    out = root / "runs" / name
    cache = root / f"{name}-cache"
    script = [str(HERE / "dpo.py"), "--config", str(HERE / "recipes" / "tiny.yaml"), "--max_steps", str(steps),
              "--ref_precompute", "false", "--output_dir", str(out), "--ref_cache_dir", str(cache)]  # fmt: skip
    _run([*launcher, *script, *batch], root, threads)
    metrics = json.loads((out / "train_results.json").read_text())
    info = json.loads((out / "run_info.json").read_text())
    runtime = metrics["train_runtime"]
    return {
        "config": name,
        "steps": steps,
        "threads_per_process": threads,
        "global_batch": info["global_batch_size"],
        "distributed": info["distributed"],
        "train_runtime_s": round(runtime, 3),
        "s_per_step": round(runtime / steps, 3),
        "pairs_per_s": round(steps * info["global_batch_size"] / runtime, 2),
        "train_loss": metrics["train_loss"],
    }


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags (BENCHMARKS.md's commands are checked against it)."""
    parser = Parser(prog="python -m vlfeedback_kit.training.bench_scale", description=__doc__)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default 1, torchrun's default)"
    )
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Time both launches and print/append one JSON line each."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.training.bench_scale", argv, args.results_dir)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepare(root)
        for name in ("one-process", "fsdp2-2proc"):
            result = launch(root, name, args.steps, args.threads)
            print(json.dumps(result))
            log.append(result)


if __name__ == "__main__":
    main()
