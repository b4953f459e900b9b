"""The benchmarks' one results log: every run appends a JSON line that says where its numbers come from.

    python -m vlfeedback_kit.training.bench --shape tiny --steps 2 --warmup 1 --configs kit-b2
    # -> benchmarks/results/training.bench.jsonl gets one line per configuration

Each line holds the commit (``git rev-parse HEAD`` of the checkout the kit runs from, and whether tracked files
differ from it; ``"unknown"`` outside a git checkout), the library versions, the device (CPU model and cores, the
GPUs ``nvidia-smi`` lists), the exact command (``python -m module args``), the UTC time and the result. BENCHMARKS.md
cites these lines by file and timestamp. One file per benchmark module under ``benchmarks/results/`` at the
repository root (a single place for every benchmark, outside the package folders); ``--results-dir`` or the
``VLFEEDBACK_BENCH_RESULTS`` environment variable sends the lines elsewhere (tests write into their temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ENV = "VLFEEDBACK_BENCH_RESULTS"
CHECKOUT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"
LIBRARIES = ("vlfeedback-kit", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow",
             "huggingface_hub", "openai", "gradio")  # fmt: skip


def add_results_dir_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--results-dir`` flag every benchmark takes."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"append this run's JSON line(s) here (default: ${ENV}, else benchmarks/results/ of the checkout)",
    )


def results_dir(override: Path | None = None) -> Path:
    """Where the lines go: the flag, else ``$VLFEEDBACK_BENCH_RESULTS``, else ``benchmarks/results/`` of the
    checkout the kit runs from (of the current directory when the kit is installed from a wheel)."""
    if override is not None:
        return override
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    root = CHECKOUT if (CHECKOUT / "pyproject.toml").is_file() else Path.cwd()
    return root / RESULTS


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> dict[str, Any]:
    """The checkout's commit, whether tracked files differ from it and which (the first 20; the results folder
    aside: appending to it is not a code change); ``"unknown"`` when the kit does not run from a git checkout."""
    head = _git("rev-parse", "HEAD") if (CHECKOUT / "pyproject.toml").is_file() else None
    if not head:
        return {"commit": "unknown", "dirty": None}
    changed = _git("diff", "HEAD", "--name-only", "--", ".", f":(exclude){RESULTS.as_posix()}")
    if changed is None:
        return {"commit": head, "dirty": None}
    paths = changed.splitlines()
    return {"commit": head, "dirty": bool(paths), **({"dirty_files": paths[:20]} if paths else {})}


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a benchmark's numbers depend on (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def device() -> dict[str, Any]:
    """The CPU model and core count, the load average, and the GPUs ``nvidia-smi`` lists (or, without it, that an
    already imported torch sees; no GPU: no key)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    found: dict[str, Any] = {"cpu": model, "cpu_count": os.cpu_count(), "load_average": _load_average()}
    gpus = _nvidia_smi() or _torch_gpus()
    if gpus:
        found["gpus"] = gpus
    return found


def _nvidia_smi() -> list[str]:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def _torch_gpus() -> list[str]:
    torch = sys.modules.get("torch")  # never imported here just to ask: a CPU benchmark need not pay for it
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def command(module: str, argv: list[str] | None) -> str:
    """The command that reproduces the run: ``python -m module args`` (``argv``: the arguments ``main`` parsed,
    None for the process's own)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def now() -> str:
    """The UTC time, to the second, ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Log:
    """One benchmark run's provenance, taken once at its start; :meth:`append` writes a result line with it."""

    def __init__(self, module: str, argv: list[str] | None, override: Path | None = None) -> None:
        self.path = results_dir(override) / f"{module.removeprefix('vlfeedback_kit.')}.jsonl"
        self.header = {"bench": module, "started": now(), **commit(), "versions": versions(), "device": device(),
                       "command": command(module, argv)}  # fmt: skip

    def append(self, result: Any) -> Path:
        """Append one JSON line (the provenance, the UTC time and ``result``) to this benchmark's file; say where."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**self.header, "timestamp": now(), "result": result}) + "\n"
        with self.path.open("a") as log:  # one short write in append mode: lines of concurrent runs do not interleave
            log.write(line)
        print(f"result recorded in {self.path} ({self.header['command']})", file=sys.stderr)
        return self.path
