"""Eval benchmark: generation throughput (batch 1 vs batched; ``--compare-base`` one mixed pass vs two passes; n
samples per prompt in one call vs n calls) on a tiny Qwen2-VL + LoRA, and judge throughput against the loopback
OpenAI-compatible server.

    python -m vlfeedback_kit.eval.bench                       # CPU, tiny model, all four measurements
    python -m vlfeedback_kit.eval.bench --skip-judge --prompts 64 --batch 32 --max-new-tokens 32
    python -m vlfeedback_kit.eval.bench --skip-judge --skip-generation --samples 4 --repeats 5   # n samples only

Targets: batched ≥ 3× batch 1 responses/s; one mixed Silkie+base pass ≥ 1.5× the throughput of two separate
passes; ``serving.sample`` of n = 4 (one processor call, one vision encode per image) ≥ 2× four separate seeded
``generate`` calls, with the same answers; judging ≥ 0.8 of the ideal ``concurrency / latency`` at 64 in flight.
The judge server is the test suite's (``tests/support/openai_server.py``, its own process): run from a checkout.
The JSON is also appended, with the commit, versions, device and command, to
``benchmarks/results/eval.bench.jsonl`` (:mod:`vlfeedback_kit.benchlog`).
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

SERVER = Path(__file__).resolve().parents[1] / "tests" / "support" / "openai_server.py"


def tiny_silkie(root: Path, family: str = "qwen2_vl") -> Path:
    """A tiny base and a LoRA run dir over it (what ``serving.load`` reads); returns the run dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.tiny_model import build_tiny_model

    base = build_tiny_model(family, root / "base")
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    model.save_pretrained(root / "run")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "run")
    (root / "run" / "run_info.json").write_text(json.dumps({"base_model": str(base)}))
    return root / "run"


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_generation(args: argparse.Namespace, model: str | None, adapter: str | None) -> dict:
    """responses/s at batch 1, batched, and Silkie+base in one mixed pass vs two passes."""
    from PIL import Image

    from vlfeedback_kit.serving import BASE, SILKIE, GenerationSettings, generate, generate_both, load

    served = load(model, adapter)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    colours = ("red", "green", "blue", "white")
    prompts = [(Image.new("RGB", (args.image_size, args.image_size), colours[i % 4]), f"Describe picture {i}.")
               for i in range(args.prompts)]  # fmt: skip
    generate(served, prompts[:2], [SILKIE] * 2, settings)  # warm-up
    n, b = len(prompts), args.batch

    def batches(rows, size):
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    modes = {
        "batch1": (args.single, lambda: [generate(served, [p], [SILKIE], settings) for p in prompts[: args.single]]),
        "batched": (n, lambda: [generate(served, chunk, [SILKIE] * len(chunk), settings)
                                for chunk in batches(prompts, b)]),
        "two_passes": (2 * n, lambda: [generate(served, chunk, [name] * len(chunk), settings)
                                       for name in (SILKIE, BASE) for chunk in batches(prompts, b)]),
        "one_pass": (2 * n, lambda: [generate_both(served, chunk, settings) for chunk in batches(prompts, b)]),
    }  # fmt: skip
    best = {name: float("inf") for name in modes}
    for _ in range(args.repeats):  # interleaved, best of N: a load spike on a shared machine hits a repeat, not a mode
        for name, (_, run) in modes.items():
            best[name] = min(best[name], _timed(run))
    rates = {name: count / best[name] for name, (count, _) in modes.items()}
    return {
        "device": str(served.model.device), "prompts": n, "batch": b, "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "image_px": args.image_size, "responses_per_s": {k: round(v, 2) for k, v in rates.items()},
        "batched_over_batch1": round(rates["batched"] / rates["batch1"], 2),
        "one_pass_over_two_passes": round(rates["one_pass"] / rates["two_passes"], 2),
    }  # fmt: skip


def bench_samples(args: argparse.Namespace, model: str | None, adapter: str | None) -> dict:
    """n sampled answers per prompt: one ``serving.sample`` call vs n separate ``generate`` calls (each with the
    draw's seeds, so both produce the same answers and the same tokens); the median of ``--repeats`` interleaved
    timings of each, wall clock and this process's CPU time."""
    import statistics

    from PIL import Image

    from vlfeedback_kit.serving import GenerationSettings, draw_seed, generate, load, sample

    served = load(model, adapter)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=1.0)
    colours = ("red", "green", "blue", "white")
    prompts = [(Image.new("RGB", (args.image_size, args.image_size), colours[i % 4]), f"Describe picture {i}.")
               for i in range(args.sample_prompts)]  # fmt: skip
    seeds, n = list(range(len(prompts))), args.samples
    sample(served, prompts[:1], 2, settings, seeds[:1])  # warm-up

    def one_call() -> list[list[str]]:
        return sample(served, prompts, n, settings, seeds)

    def separate() -> list[list[str]]:
        draws = [generate(served, prompts, None, settings, seeds=[draw_seed(s, j) for s in seeds]) for j in range(n)]
        return [list(answers) for answers in zip(*draws)]

    times: dict[str, list[float]] = {"one_call": [], "separate_calls": []}
    cpu: dict[str, list[float]] = {"one_call": [], "separate_calls": []}
    for _ in range(args.repeats):  # interleaved: a load spike on a shared machine hits one repeat, not one mode
        for name, run in (("one_call", one_call), ("separate_calls", separate)):
            started = time.process_time()
            times[name].append(_timed(run))
            cpu[name].append(time.process_time() - started)  # this process's CPU: less swayed by other work
    median = {name: statistics.median(values) for name, values in times.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "device": str(served.model.device), "prompts": len(prompts), "n": n, "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens, "image_px": args.image_size,
        "seconds": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "median_cpu_s": {name: round(value, 3) for name, value in median_cpu.items()},
        "one_call_over_separate": round(median["separate_calls"] / median["one_call"], 2),
        "one_call_over_separate_cpu": round(median_cpu["separate_calls"] / median_cpu["one_call"], 2),
        "same_answers": one_call() == separate(),
    }  # fmt: skip


def bench_judge(args: argparse.Namespace) -> dict:
    """MMHal-Bench judge calls per second against the loopback server, and the share of the ideal."""
    import openai  # noqa: F401 - imported before the clock starts, as in a run that has already begun

    from vlfeedback_kit.builders.pipeline import cost, endpoint, store  # noqa: F401
    from vlfeedback_kit.eval.items import Item
    from vlfeedback_kit.eval.judging import JudgeConfig, judge
    from vlfeedback_kit.eval.scoring import tasks_for

    record = {"image_content": ["Tree", "Tower"], "question": "What is in the photo?", "gt_answer": "A smokestack."}
    items = [Item(str(i), record["question"], meta={"record": record}) for i in range(args.judge_items)]
    tasks = tasks_for("mmhal", items, {item.id: f"A tall tower number {item.id}." for item in items})
    server = subprocess.Popen([sys.executable, str(SERVER), "--latency", str(args.latency)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        url = server.stdout.readline().strip()
        os.environ["BENCH_JUDGE_KEY"] = "sk-bench"
        config = JudgeConfig("bench-judge", url, "BENCH_JUDGE_KEY", concurrency=args.concurrency)
        with tempfile.TemporaryDirectory(prefix="vlf-eval-judge-") as tmp:
            cache = Path(tmp) / "cache.sqlite"
            cpu = time.process_time()
            seconds = _timed(lambda: judge(tasks, config, cache, "mmhal", progress=False))
            cpu = time.process_time() - cpu
            again = _timed(lambda: judge(tasks, config, cache, "mmhal", progress=False))
    finally:
        server.terminate()
        server.wait()
    rate, ideal = len(tasks) / seconds, args.concurrency / args.latency
    return {"items": len(tasks), "latency_s": args.latency, "in_flight": args.concurrency,
            "seconds": round(seconds, 2), "items_per_s": round(rate, 1), "ideal_per_s": round(ideal, 1),
            "of_ideal": round(rate / ideal, 2), "client_cpu_ms_per_item": round(cpu / len(tasks) * 1000, 2),
            "cached_rerun_s": round(again, 3)}  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a base model (default: a tiny Qwen2-VL built here)")
    parser.add_argument("--adapter", help="its LoRA adapter (default: a tiny LoRA built here)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--single", type=int, default=8, help="prompts timed at batch 1")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="generation timings: best of N, interleaved")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--samples", type=int, default=4, help="n sampled answers per prompt (the n-samples bench)")
    parser.add_argument("--sample-prompts", type=int, default=8, help="prompts of the n-samples bench")
    parser.add_argument("--judge-items", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-samples", action="store_true")
    parser.add_argument("--skip-judge", action="store_true")
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print one JSON object and append it to the results log."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.eval.bench", argv, args.results_dir)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if not (args.skip_generation and args.skip_samples):
        with tempfile.TemporaryDirectory(prefix="vlf-eval-bench-") as tmp:
            adapter = args.adapter or (None if args.model else str(tiny_silkie(Path(tmp))))
            if not args.skip_generation:
                result["generation"] = bench_generation(args, args.model, adapter)
            if not args.skip_samples:
                result["samples"] = bench_samples(args, args.model, adapter)
    if not args.skip_judge:
        result["judge"] = bench_judge(args)
    print(json.dumps(result, indent=1))
    log.append(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
