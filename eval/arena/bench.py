"""Arena latency on this machine: one battle (both sides in one batched ``generate``) against the two answers
generated one after the other, the time to the first streamed token, and 8 concurrent ``compare`` calls.

    python -m vlfeedback_kit.eval.arena.bench                       # a tiny Qwen2-VL + random LoRA, built in-process
    python -m vlfeedback_kit.eval.arena.bench --adapter runs/silkie-tiny --tokens 64 --repeats 5 --threads 1

Target (issue #12): battle ≤ 0.7 × the two sequential answers. Numbers go to BENCHMARKS.md; each run appends them,
with the commit, versions, device and command, to ``benchmarks/results/eval.arena.bench.jsonl``
(:mod:`vlfeedback_kit.benchlog`).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser


def tiny_silkie(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """The kit's tiny Qwen2-VL under ``root/base`` and a random, non-zero LoRA run dir under ``root/run``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.tiny_model import build_tiny_model

    base = build_tiny_model("qwen2_vl", root / "base", seed=seed)
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"])
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base), lora)
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; make Silkie differ from its base
            param.data.normal_(0, 0.5)
    model.save_pretrained(root / "run")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "run")
    (root / "run" / "run_info.json").write_text(json.dumps({"base_model": str(base)}))
    return base, root / "run"


def time_battle(served, image, question: str, settings, repeats: int) -> dict:
    """Median seconds of a battle (one batched generate, streamed) and of the two answers one after the other,
    interleaved. Both run in a worker thread, as gradio runs a Space's handlers (see BENCHMARKS.md: on a busy
    2-core VM, generate in the main thread with 2 OpenMP threads ran 3–8× slower, which would flatter the battle)."""
    from vlfeedback_kit.eval.arena.streaming import stream_pair
    from vlfeedback_kit.serving import BASE, SILKIE, generate

    def one_after_the_other() -> None:
        for adapter in (SILKIE, BASE):
            generate(served, [(image, question)], [adapter], settings)

    batched, sequential, first, cpu_batched, cpu_sequential = [], [], [], [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), cpu_seconds()
        for i, _pair in enumerate(stream_pair(served, image, question, [SILKIE, BASE], settings)):
            if i == 0:
                first.append(time.perf_counter() - start)
        batched.append(time.perf_counter() - start)
        cpu_batched.append(cpu_seconds() - cpu)
        worker = threading.Thread(target=one_after_the_other)
        start, cpu = time.perf_counter(), cpu_seconds()
        worker.start()
        worker.join()
        sequential.append(time.perf_counter() - start)
        cpu_sequential.append(cpu_seconds() - cpu)
    battle, apart = statistics.median(batched), statistics.median(sequential)
    return {"battle_s": battle, "sequential_s": apart, "ratio": battle / apart,
            "cpu_ratio": statistics.median(cpu_batched) / statistics.median(cpu_sequential),
            "first_token_s": statistics.median(first), "repeats": repeats}  # fmt: skip


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads): steadier than wall time on a shared VM."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def concurrent_compare(served, image_path: Path, calls: int, tokens: int) -> dict:
    """Launch the app on a loopback port and submit ``calls`` compare requests at once; all must come back."""
    from gradio_client import Client, handle_file

    from vlfeedback_kit.eval.arena.config import ArenaConfig
    from vlfeedback_kit.eval.arena.store import VoteStore
    from vlfeedback_kit.eval.arena.ui import build_app

    with tempfile.TemporaryDirectory() as votes, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        config = ArenaConfig(max_new_tokens=tokens, battles_per_minute=calls)  # one client: above the visitor rate
        demo = build_app(served, config, VoteStore(votes))
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(demo.local_url, verbose=False)
            start = time.perf_counter()
            jobs = [client.submit(handle_file(str(image_path)), f"question {i}", api_name="/compare")
                    for i in range(calls)]  # fmt: skip
            done = sum(len(job.result(timeout=600)) == 2 for job in jobs)
            wall = time.perf_counter() - start
        finally:
            demo.close()
    return {"calls": calls, "succeeded": done, "wall_s": wall, "per_call_s": wall / calls}


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", help="a Silkie run dir (default: a tiny random one, built in a temp dir)")
    parser.add_argument("--model", help="base model (default: the run dir's)")
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per answer (default 128, the Space's)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Time battles and concurrent compare calls, print them and append them to the results log."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.eval.arena.bench", argv, args.results_dir)

    import torch
    from PIL import Image

    from vlfeedback_kit.serving import GenerationSettings, load

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        adapter = args.adapter or str(tiny_silkie(Path(scratch))[1])
        served = load(args.model, adapter=adapter)
        image_path = Path(scratch) / "image.png"
        Image.new("RGB", (448, 448), (200, 30, 30)).save(image_path)
        image = Image.open(image_path).convert("RGB")
        settings = GenerationSettings(max_new_tokens=args.tokens)
        time_battle(served, image, "What colour is the square?", settings, 1)  # warm-up
        results = {"device": str(served.model.device), "threads": torch.get_num_threads(), "tokens": args.tokens,
                   **time_battle(served, image, "What colour is the square?", settings, args.repeats),
                   "compare": concurrent_compare(served, image_path, args.concurrent, args.tokens)}  # fmt: skip
    print(f"battle (one batched generate, streamed): {results['battle_s']:.3f} s | two answers one after the other: "
          f"{results['sequential_s']:.3f} s | ratio {results['ratio']:.2f} (target ≤ 0.70; CPU time "
          f"{results['cpu_ratio']:.2f}) | first streamed token "
          f"{results['first_token_s'] * 1000:.0f} ms")  # fmt: skip
    compare = results["compare"]
    print(f"{compare['calls']} concurrent compare calls: {compare['succeeded']} succeeded in "
          f"{compare['wall_s']:.2f} s ({compare['per_call_s']:.2f} s per call, one generate at a time)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    log.append(results)
    return results


if __name__ == "__main__":
    main()
