"""Judge-pipeline benchmark: ``annotate`` throughput against a loopback OpenAI-compatible server with fixed latency.

    python -m vlfeedback_kit.builders.pipeline.bench --items 2000 --latency 0.2 --concurrency 64

Writes the kit's sample (``--items`` instructions × 4 responses, JPEGs of 224–448 px) as the input, starts the
test suite's loopback server (``tests/support/openai_server.py``) in its own process with ``--latency`` seconds
per reply, runs ``vlfeedback annotate`` in a child process and reports items/s in the judging phase against the
ideal ``concurrency / latency`` (320/s for 64 in flight at 200 ms), plus the whole command's wall time (imports,
the input scan, the release-layout assembly), and appends them to ``benchmarks/results/builders.pipeline.bench.jsonl``
(:mod:`vlfeedback_kit.benchlog`). Run from a checkout: the server lives in ``tests/``.
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

SERVER = Path(__file__).resolve().parents[2] / "tests" / "support" / "openai_server.py"


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="instructions to judge (default 2000)")
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per reply (default 0.2)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print one Markdown table row and append the result to the results log."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.builders.pipeline.bench", argv, args.results_dir)
    from vlfeedback_kit.builders.sample import write_sample

    with tempfile.TemporaryDirectory(prefix="vlf-judge-bench-") as tmp:
        root = Path(tmp)
        write_sample(root / "input", num_instructions=args.items)
        server = subprocess.Popen(
            [sys.executable, str(SERVER), "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True
        )
        try:
            url = server.stdout.readline().strip()
            env = {**os.environ, "BENCH_JUDGE_KEY": "sk-bench"}
            command = [
                sys.executable,
                "-m",
                "vlfeedback_kit.cli",
                "annotate",
                "--input",
                str(root / "input"),
                "--out",
                str(root / "out"),
                "--base-url",
                url,
                "--judge-model",
                "gpt-4o",
                "--api-key-env",
                "BENCH_JUDGE_KEY",
                "--concurrency",
                str(args.concurrency),
                "--quiet",
            ]
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
        report = json.loads((root / "out" / "annotate" / "report.json").read_text())
    ideal = args.concurrency / args.latency
    seconds = report["run"]["seconds"]
    rate = report["run"]["finished"]["ok"] / seconds
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| items | latency s | in flight | judging s | items/s | ideal/s | of ideal | command wall s |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.items:,} | {args.latency} | {args.concurrency} | {seconds:.2f} | {rate:.1f} | "
        f"{ideal:.0f} | {rate / ideal:.2f} | {wall:.2f} |"
    )
    log.append({"items": args.items, "latency_s": args.latency, "in_flight": args.concurrency,
                "judging_s": round(seconds, 2), "items_per_s": round(rate, 1), "ideal_per_s": round(ideal, 1),
                "of_ideal": round(rate / ideal, 2), "command_wall_s": round(wall, 2)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
