"""Rounds benchmark: one on-policy round's stages (generate, judge, build, train, evaluate) timed on a tiny Qwen2-VL
with the test suite's rule judge, and the n-sample generation speed-up (one ``serving.sample`` call vs n calls).

    python -m vlfeedback_kit.rounds.bench                        # CPU, tiny model, 16 prompts x 4 samples
    python -m vlfeedback_kit.rounds.bench --prompts 32 --heldout 16 --max-steps 12

The judge is ``tests/support/rounds.py`` in its own process (run from a checkout), answering without latency, so
the judge stage measures the kit's own overhead (the ledger, validation, assembly), not an API. The n-sample part
is :func:`vlfeedback_kit.eval.bench.bench_samples`. The JSON is printed and appended to
``benchmarks/results/rounds.bench.jsonl`` (:mod:`vlfeedback_kit.benchlog`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser

TESTS = Path(__file__).resolve().parents[2] / "tests"
KEY_ENV = "VLF_TEST_JUDGE_KEY"


def start_judge() -> tuple[subprocess.Popen, str]:
    """The rule judge in a child process, and its URL."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from support.rounds import serve; serve()"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


def bench_round(args: argparse.Namespace, root: Path, url: str) -> dict:
    """Seconds per stage of round 1 (generation starts from the base) on a fresh folder."""
    sys.path.insert(0, str(TESTS))
    from support.rounds import workspace

    from vlfeedback_kit.rounds.config import load_config
    from vlfeedback_kit.rounds.loop import run_round

    os.environ.setdefault(KEY_ENV, "sk-bench")
    overrides = {"train": {"overrides": {"max_steps": args.max_steps, "learning_rate": 5.0e-3, "audit": False}},
                 "samples": args.samples, "generation": {"max_new_tokens": args.max_new_tokens}}  # fmt: skip
    config = load_config(workspace(root, url, prompts=args.prompts, heldout=args.heldout, **overrides))
    marks: list[tuple[str, float]] = []
    started = time.perf_counter()
    record = run_round(config, root / "out", 1, progress=False,
                       hook=lambda k, stage: marks.append((stage, time.perf_counter())))  # fmt: skip
    ended = time.perf_counter()
    seconds = {stage: round(end - start, 2) for (stage, start), (_, end) in
               zip(marks, [*marks[1:], ("end", ended)], strict=True)}  # fmt: skip
    return {"prompts": args.prompts, "samples": args.samples, "heldout": args.heldout, "max_steps": args.max_steps,
            "max_new_tokens": args.max_new_tokens, "seconds": seconds, "total_s": round(ended - started, 2),
            "pairs": record["pairs"], "win_rate_vs_base": record["eval"]["vs_base"]["win_rate"],
            "win_rate_ci": record["eval"]["vs_base"]["win_rate_ci"]}  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts of the round")
    parser.add_argument("--heldout", type=int, default=8, help="held-out prompts of the win rate")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=12, help="training steps of the round")
    parser.add_argument("--repeats", type=int, default=3, help="n-sample timings: median of N, interleaved")
    parser.add_argument("--skip-round", action="store_true")
    parser.add_argument("--skip-samples", action="store_true")
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print one JSON object and append it to the results log."""
    from vlfeedback_kit.eval.bench import bench_samples, tiny_silkie

    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.rounds.bench", argv, args.results_dir)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vlf-rounds-bench-") as tmp:
        if not args.skip_round:
            child, url = start_judge()
            try:
                result["round"] = bench_round(args, Path(tmp), url)
            finally:
                child.kill()
                child.wait()
        if not args.skip_samples:
            sample_args = argparse.Namespace(max_new_tokens=args.max_new_tokens, image_size=112, samples=args.samples,
                                             sample_prompts=args.prompts, repeats=args.repeats)  # fmt: skip
            result["samples"] = bench_samples(sample_args, None, str(tiny_silkie(Path(tmp) / "silkie")))
    print(json.dumps(result, indent=1))
    log.append(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
