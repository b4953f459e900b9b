"""Judge-pipeline benchmark: ``annotate`` throughput against a loopback OpenAI-compatible server with fixed latency.

    python -m vlfeedback_kit.builders.pipeline.bench --items 2000 --latency 0.2 --concurrency 64
    python -m vlfeedback_kit.builders.pipeline.bench --items 1000 --concurrency 16 --replicas 1,2   # replica scaling

Writes the kit's sample (``--items`` instructions × 4 responses, JPEGs of 224–448 px) as the input, starts the
test suite's loopback server (``tests/support/openai_server.py``) in its own process with ``--latency`` seconds
per reply, runs ``vlfeedback annotate`` in a child process and reports items/s in the judging phase against the
ideal ``concurrency / latency`` (320/s for 64 in flight at 200 ms), plus the whole command's wall time (imports,
the input scan, the release-layout assembly), and appends them to ``benchmarks/results/builders.pipeline.bench.jsonl``
(:mod:`vlfeedback_kit.benchlog`). ``--replicas 1,2`` runs it once per count, each replica a server process of its
own, ``--concurrency`` in flight on each (annotate's per-replica meaning), and reports each count's items/s against
one replica's. Run from a checkout: the server lives in ``tests/``.
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
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per replica (default 64)")
    parser.add_argument(
        "--replicas", default="1", help="comma list of replica counts to run, e.g. 1,2 (default 1: one server)"
    )
    add_results_dir_argument(parser)
    return parser


def judge_run(root: Path, items: int, latency: float, concurrency: int, replicas: int) -> tuple[float, float]:
    """One ``annotate`` of the sample against ``replicas`` loopback servers: (judging s, command wall s)."""
    servers = [
        subprocess.Popen([sys.executable, str(SERVER), "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
        for _ in range(replicas)
    ]
    out = root / f"out-{replicas}"
    try:
        urls = ",".join(server.stdout.readline().strip() for server in servers)
        env = {**os.environ, "BENCH_JUDGE_KEY": "sk-bench"}
        command = [sys.executable, "-m", "vlfeedback_kit.cli", "annotate", "--input", str(root / "input"), "--out",
                   str(out), "--base-url", urls, "--judge-model", "gpt-4o", "--api-key-env", "BENCH_JUDGE_KEY",
                   "--concurrency", str(concurrency), "--quiet"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    report = json.loads((out / "annotate" / "report.json").read_text())
    if report["run"]["finished"].get("ok") != items:
        raise RuntimeError(f"{replicas} replica(s): {report['run']['finished']} of {items} items judged")
    return report["run"]["seconds"], wall


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print one Markdown table row per replica count and append each to the results log."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.builders.pipeline.bench", argv, args.results_dir)
    from vlfeedback_kit.builders.sample import write_sample

    counts = [int(n) for n in args.replicas.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| replicas | items | latency s | in flight | judging s | items/s | ideal/s | of ideal | vs 1 replica "
          "| command wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    single = None
    with tempfile.TemporaryDirectory(prefix="vlf-judge-bench-") as tmp:
        root = Path(tmp)
        write_sample(root / "input", num_instructions=args.items)
        for replicas in counts:
            seconds, wall = judge_run(root, args.items, args.latency, args.concurrency, replicas)
            in_flight = args.concurrency * replicas
            ideal, rate = in_flight / args.latency, args.items / seconds
            single = rate if replicas == 1 else single
            speedup = round(rate / single, 2) if single else None
            print(f"| {replicas} | {args.items:,} | {args.latency} | {in_flight} | {seconds:.2f} | {rate:.1f} | "
                  f"{ideal:.0f} | {rate / ideal:.2f} | {speedup or '-'} | {wall:.2f} |")  # fmt: skip
            log.append({"items": args.items, "latency_s": args.latency, "replicas": replicas, "in_flight": in_flight,
                        "judging_s": round(seconds, 2), "items_per_s": round(rate, 1), "ideal_per_s": round(ideal, 1),
                        "of_ideal": round(rate / ideal, 2), "vs_one_replica": speedup,
                        "command_wall_s": round(wall, 2)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
