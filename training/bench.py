"""DPO step benchmark: TRL's stock ``DPOTrainer`` against the kit's ``SilkieDPOTrainer``, same model and rows.

    python -m vlfeedback_kit.training.bench --shape tiny                         # the CPU check (2 cores)
    python -m vlfeedback_kit.training.bench --shape qwen2-vl-7b --device cuda    # one H100/H200, bf16, random init

Both trainers get the same random-init model (a tiny model, or the public Qwen2-VL 2B/7B shapes), the Silkie LoRA
(r 64, alpha 16, language model only, vision frozen; its dropout .05 is zeroed by TRL's default ``disable_dropout``
as in the measured anchor, except in ``-dropout`` configurations), beta 0.1, sdpa, and the same synthetic rows
(VLFeedback-like: one 448x448 image, a ~40-word prompt, 100-300-word answers). Each configuration runs
``--warmup`` then ``--steps`` timed optimizer steps (per-device batch B, no accumulation); the step time is the
median wall time between optimizer-step ends (data loading included). GPU numbers in BENCHMARKS.md before
2026-11-27 used the mean.

Configurations (``CONFIGS``): ``trl-*`` is TRL's stock trainer; ``kit-b<B>`` the kit; ``-prefix`` adds prompt-prefix
sharing, ``-ckpt`` full activation checkpointing, ``-sac`` the ``save_matmuls`` checkpointing policy (``-full<N>``:
N layers fully checkpointed), ``-grouped`` ``train_sampling_strategy: group_by_length`` over 4x the rows, so the
trained batches are exactly one sorted megabatch.

Printed per configuration: pairs/s, LM tokens/s (non-padding tokens of chosen + rejected sequences), peak memory
(GPU: ``max_memory_allocated`` over the timed steps — over all steps for ``-grouped``, whose warm-up steps get the
longest batches; CPU: the process's max RSS), MFU, and the losses of the timed steps. A peak over ten steps is not
an epoch's peak: the longest batch of an epoch decides that (the memory tool predicts it). The kit's
reference pass (one batched gradient-free pass over the pairs, cached for later epochs and runs) is timed apart and
folded into ``pairs/s 3 ep``: the throughput of a 3-epoch run that pays the pass once.

MFU = useful FLOPs / (time x peak FLOP/s). Useful FLOPs per pair = 6 N_lm T + 2 N_vit P: per LM token T a LoRA
policy forward and backward (4 N_lm) and a reference forward (2 N_lm), plus one ViT forward over the image's P
patches. The same useful work is counted for every configuration, so MFU is proportional to pairs/s. Peak:
989 TFLOP/s (H100/H200 bf16 dense) on CUDA; on the CPU MFU is not reported.

Each configuration's result is appended as it finishes, with the commit, versions, device and command, to
``benchmarks/results/training.bench.jsonl`` (:mod:`vlfeedback_kit.benchlog`; ``--results-dir`` to send it elsewhere),
so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser
from vlfeedback_kit.training.compat import model_from_config, trained_tokens
from vlfeedback_kit.training.tiny_model import FAMILIES

PEAK_FLOPS = {"cuda": 989e12}


def _qwen2_vl(hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int, tied: bool) -> dict:
    """A Qwen2-VL shape: 28 decoder layers, the 32-layer 1280-wide ViT whose merger projects to ``hidden``."""
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}
    return {
        "family": "qwen2_vl",
        "text": {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": 28,
                 "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
                 "tie_word_embeddings": tied, "rope_parameters": rope},
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": hidden},
    }  # fmt: skip


SHAPES: dict[str, dict] = {
    "qwen2-vl-2b": _qwen2_vl(1536, 8960, 12, 2, 151936, tied=True),
    "qwen2-vl-7b": _qwen2_vl(3584, 18944, 28, 4, 152064, tied=False),
    "qwen3-vl-8b": {
        "family": "qwen3_vl",
        "text": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                   "out_hidden_size": 4096, "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
    },
    "gemma3-12b": {
        "family": "gemma3",
        "text": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
                 "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256, "vocab_size": 262208,
                 "sliding_window": 1024, "tie_word_embeddings": True},
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                   "image_size": 896, "patch_size": 14},
        "gemma_layer_pattern": 6,  # five sliding-window layers, then a global one
        "config": {"mm_tokens_per_image": 256},
    },
}  # fmt: skip
"""Public dimensions (the Hub configs) of the random-init shapes: Qwen2-VL-2B/7B-Instruct (both with the 32-layer,
1280-wide ViT), Qwen3-VL-8B-Instruct (27-layer SigLIP-2 ViT, DeepStack) and Gemma-3-12B-it (SigLIP so400m at 896 px,
256 soft tokens per image). The tokenizer and processor are the tiny model's of the same family, at the real
image resolution."""
CONFIGS = {
    "trl-b1": {"trainer": "trl", "batch": 1, "checkpointing": False},
    "kit-b1": {"trainer": "kit", "batch": 1, "checkpointing": False},
    "kit-b1-prefix": {"trainer": "kit", "batch": 1, "checkpointing": False, "prefix": True},
    "trl-default": {"trainer": "trl", "batch": 2, "checkpointing": True},
    "trl-b2": {"trainer": "trl", "batch": 2, "checkpointing": False},
    "trl-b8": {"trainer": "trl", "batch": 8, "checkpointing": False},
    "kit-b2": {"trainer": "kit", "batch": 2, "checkpointing": False},
    "kit-b4": {"trainer": "kit", "batch": 4, "checkpointing": False},
    "kit-b8": {"trainer": "kit", "batch": 8, "checkpointing": False},
    "kit-b8-ckpt": {"trainer": "kit", "batch": 8, "checkpointing": True},
    "kit-b16-ckpt": {"trainer": "kit", "batch": 16, "checkpointing": True},
    "kit-b2-prefix": {"trainer": "kit", "batch": 2, "checkpointing": False, "prefix": True},
    "kit-b4-prefix": {"trainer": "kit", "batch": 4, "checkpointing": False, "prefix": True},
    "kit-b8-prefix": {"trainer": "kit", "batch": 8, "checkpointing": False, "prefix": True},
    "kit-b16-ckpt-prefix": {"trainer": "kit", "batch": 16, "checkpointing": True, "prefix": True},
    "kit-b1-ckpt": {"trainer": "kit", "batch": 1, "checkpointing": True},
    "kit-b1-dropout": {"trainer": "kit", "batch": 1, "checkpointing": False, "dropout": True},
    "kit-b1-sac-dropout": {
        "trainer": "kit", "batch": 1, "checkpointing": True, "policy": "save_matmuls", "dropout": True
    },
    "kit-b1-prefix-sac-dropout": {
        "trainer": "kit", "batch": 1, "checkpointing": True, "policy": "save_matmuls", "prefix": True, "dropout": True
    },
    # selective checkpointing: keep matrix-product and attention outputs, recompute element-wise work
    **{
        f"kit-b{batch}{'-prefix' if prefix else ''}-sac": {
            "trainer": "kit", "batch": batch, "checkpointing": True, "policy": "save_matmuls", "prefix": prefix
        }
        for batch in (1, 8, 12, 16)
        for prefix in (False, True)
    },
    # ... batches grouped by length (train_sampling_strategy group_by_length: less padding)
    **{
        f"kit-b{batch}-prefix-sac{full}-grouped": {
            "trainer": "kit", "batch": batch, "checkpointing": True, "policy": "save_matmuls", "prefix": True,
            "full_layers": int(full.removeprefix("-full") or 0), "grouped": True,
        }
        for batch in (2, 6, 8, 12)
        for full in ("", "-full4", "-full8")
    },
    # ... with a few layers fully checkpointed, to fit a memory budget
    **{
        f"kit-b{batch}-prefix-sac-full{full}": {
            "trainer": "kit", "batch": batch, "checkpointing": True, "policy": "save_matmuls", "prefix": True,
            "full_layers": full,
        }
        for batch in (1, 8, 12)
        for full in (4, 8)
    },
}  # fmt: skip
DEFAULT_CONFIGS = {
    "trl-b1": {"trainer": "trl", "batch": 1, "checkpointing": False},
    "kit-b1": {"trainer": "kit", "batch": 1, "checkpointing": False},
    "kit-b1-prefix": {"trainer": "kit", "batch": 1, "checkpointing": False, "prefix": True},
    "cpu": ["trl-default", "trl-b2", "kit-b2"],
    # the next GPU run (BENCHMARKS.md 2026-11-27): the baseline, then the candidates for >= 8 pairs/s under 40 GiB
    "cuda": [
        "trl-default",
        "kit-b8",
        "kit-b6-prefix-sac-grouped",
        "kit-b8-prefix-sac-full4-grouped",
        "kit-b8-prefix-sac-full8-grouped",
        "kit-b16-ckpt-prefix",
    ],
}


def synthetic_pairs(n: int, seed: int = 0):
    """VLFeedback-like pair rows in the kit's schema: a 448x448 JPEG, ~40-word prompt, 100-300-word answers."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    from vlfeedback_kit.builders.features import PAIR_FEATURES
    from vlfeedback_kit.training.tiny_model import corpus

    rng = np.random.default_rng(seed)
    words = sorted({w for line in corpus() for w in line.split() if w.isalpha()})

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(low, high))))

    def message(role: str, content: str, image: bool = False) -> list[dict]:
        parts = ([{"type": "image", "text": None}] if image else []) + [{"type": "text", "text": content}]
        return [{"role": role, "content": parts}]

    rows = []
    for i in range(n):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((448, 448)).save(buffer, "JPEG", quality=85)
        rows.append({
            "id": f"bench-{i}", "source": "bench", "images": [{"bytes": buffer.getvalue(), "path": None}],
            "prompt": message("user", text(35, 45), image=True), "chosen": message("assistant", text(100, 300)),
            "rejected": message("assistant", text(100, 300)), "chosen_model": "a", "rejected_model": "b",
            "chosen_ratings": dict.fromkeys(("Helpfulness", "Visual Faithfulness", "Ethical Considerations"), 5),
            "rejected_ratings": dict.fromkeys(("Helpfulness", "Visual Faithfulness", "Ethical Considerations"), 1),
            "chosen_score": 5.0, "rejected_score": 1.0, "margin": 4.0,
        })  # fmt: skip
    return Dataset.from_list(rows, features=PAIR_FEATURES)


def build_model(
    shape: str, folder: Path, device: str, layers: int | None = None, vision_depth: int | None = None,
    family: str = "qwen2_vl", meta: bool = False,
):  # fmt: skip
    """The model and processor of a shape: the tiny model of ``family`` (``tiny_model.FAMILIES``), or a random-init
    public shape (:data:`SHAPES`), optionally with fewer language-model ``layers`` or ViT blocks, as the memory tool
    uses to account per layer (``meta``: on the meta device, for counting parameters)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.tiny_model import build_tiny_model

    if shape != "tiny":
        if shape not in SHAPES:
            raise SystemExit(f"--shape must be tiny or one of {', '.join(SHAPES)}")
        if family not in ("qwen2_vl", SHAPES[shape]["family"]):
            raise SystemExit(f"--family {family} runs with --shape tiny or its own shapes, not {shape}")
        family = SHAPES[shape]["family"]
    tiny = build_tiny_model(family, folder / "tiny")
    processor = AutoProcessor.from_pretrained(tiny)
    if shape == "tiny":
        return AutoModelForImageTextToText.from_pretrained(tiny).to(device), processor
    spec = SHAPES[shape]
    tiny_model = AutoModelForImageTextToText.from_pretrained(tiny)
    config = tiny_model.config
    text = config.text_config.to_dict() | spec["text"]
    text.pop("layer_types", None)
    text.pop("max_window_layers", None)
    if layers is not None:
        text["num_hidden_layers"] = layers
    vision = config.vision_config.to_dict() | spec["vision"]
    depth_key = "depth" if "depth" in vision else "num_hidden_layers"
    if vision_depth is not None:
        vision[depth_key] = vision_depth
    if "deepstack_visual_indexes" in vision:  # DeepStack taps must exist in a shortened tower
        taps = [i for i in vision["deepstack_visual_indexes"] if i < vision[depth_key]]
        vision["deepstack_visual_indexes"] = taps or [0]
    if "gemma_layer_pattern" in spec:
        pattern = spec["gemma_layer_pattern"]
        text["layer_types"] = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                               for i in range(text["num_hidden_layers"])]  # fmt: skip
    full = type(config)(**{**config.to_dict(), **spec.get("config", {}), "text_config": text, "vision_config": vision})
    processor = real_resolution(processor, family, spec)
    torch.manual_seed(0)
    with torch.device("meta" if meta else device):
        model = model_from_config(type(tiny_model), full, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model, processor


def real_resolution(processor, family: str, spec: dict):
    """The tiny processor set to the real model's image budget: a 448x448 image gives Qwen2-VL 256 tokens (28 px
    per token), Qwen3-VL 196 (32 px), and Gemma 3 always its 256 soft tokens of an 896 px image."""
    if family in ("qwen2_vl", "qwen3_vl"):
        per_token = 28 if family == "qwen2_vl" else 32
        low, high = 4 * per_token**2, 1280 * per_token**2
        processor.image_processor.min_pixels, processor.image_processor.max_pixels = low, high
        processor.image_processor.size = {"shortest_edge": low, "longest_edge": high}
        return processor
    if family == "gemma3":
        from transformers import Gemma3ImageProcessor

        side = spec["vision"]["image_size"]
        return type(processor)(
            image_processor=Gemma3ImageProcessor(size={"height": side, "width": side}, do_pan_and_scan=False),
            tokenizer=processor.tokenizer, chat_template=processor.chat_template, image_seq_length=256,
        )  # fmt: skip
    raise SystemExit(f"no real-resolution processor for {family}")


def parameter_counts(model) -> tuple[int, int]:
    """(language-model parameters, vision parameters)."""
    from vlfeedback_kit.training.freeze import is_vision_parameter

    vision = sum(p.numel() for n, p in model.named_parameters() if is_vision_parameter(n))
    return sum(p.numel() for p in model.parameters()) - vision, vision


def make_trainer(
    shape: str, name: str, device: str, work: Path, rows: int, max_steps: int, ref_factor: int = 2, workers: int = 2,
    **model_kwargs,
):  # fmt: skip
    """The trainer of one configuration on ``rows`` synthetic pairs, with (language, vision) parameter counts."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from vlfeedback_kit.training.config import SilkieDPOConfig
    from vlfeedback_kit.training.freeze import freeze_vision, language_lora_targets
    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    spec = CONFIGS[name]
    model, processor = build_model(shape, work, device, **model_kwargs)
    freeze_vision(model)
    counts = parameter_counts(model)
    dataset = synthetic_pairs(rows)
    cuda = device == "cuda"
    common = dict(
        output_dir=str(work / "run"),
        per_device_train_batch_size=spec["batch"],
        max_steps=max_steps,
        learning_rate=1e-5,
        beta=0.1,
        max_length=None,
        bf16=cuda or model.dtype == torch.bfloat16,
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        activation_checkpointing=spec["checkpointing"],
        dataloader_num_workers=workers if cuda else 0,
    )
    if spec.get("grouped"):
        common["train_sampling_strategy"] = "group_by_length"
    if spec.get("dropout"):  # the paper recipes' LoRA dropout; TRL's default disable_dropout sets it to 0
        common["disable_dropout"] = False
    if spec.get("every_n_layers"):
        common["activation_checkpointing_kwargs"] = {"use_reentrant": False, "every_n_layers": spec["every_n_layers"]}
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=language_lora_targets())
    if spec["trainer"] == "trl":
        trainer = DPOTrainer(
            model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=processor, peft_config=lora
        )
    else:
        trainer = SilkieDPOTrainer(
            model=model,
            args=SilkieDPOConfig(
                **common,
                ref_batch_size=ref_factor * spec["batch"],
                share_prompt_prefix=spec.get("prefix", False),
                checkpoint_policy=spec.get("policy", "full"),
                full_checkpoint_layers=spec.get("full_layers", 0),
            ),
            train_dataset=dataset,
            processing_class=processor,
            peft_config=lora,
            ref_cache=RefLogpCache(work / "ref.parquet", {}),
        )
    return trainer, counts


def run_config(
    shape: str, name: str, device: str, steps: int, warmup: int, ref_factor: int = 2, workers: int = 2,
    family: str = "qwen2_vl",
) -> dict:  # fmt: skip
    """Train one configuration for warmup + steps steps and measure the timed ones."""
    import torch
    from transformers import TrainerCallback

    spec = CONFIGS[name]
    work = Path(tempfile.mkdtemp(prefix="vlf-bench-"))
    # grouped by length: 4x the rows, so transformers' sampler sorts exactly the trained batches as one megabatch
    # (a random sample of the rows; the two warm-up steps get its longest batches, the timed ones the rest)
    rows = (warmup + steps) * spec["batch"] * (4 if spec.get("grouped") else 1)
    trainer, (n_lm, n_vit) = make_trainer(
        shape, name, device, work, rows, warmup + steps, ref_factor, workers, family=family
    )
    dataset = trainer.train_dataset
    cuda = device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        """Wall time between optimizer-step ends (data loading and collation included), and tokens per step."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.tokens: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.ends.append(time.perf_counter())
            self.tokens.append(trained_tokens(trainer))
            if state.global_step == warmup and cuda and not spec.get("grouped"):  # grouped: warm-up = longest
                torch.cuda.reset_peak_memory_stats()

    timer = Timer()
    trainer.add_callback(timer)
    reference_seconds = 0.0
    if spec["trainer"] == "kit":
        sync()
        started = time.perf_counter()
        trainer.precompute_reference()
        sync()
        reference_seconds = time.perf_counter() - started
    trainer.train()
    durations = sorted(b - a for a, b in zip(timer.ends[warmup - 1 :], timer.ends[warmup:]))
    step = durations[len(durations) // 2]  # the median step: robust to a busy neighbour on a shared machine
    pairs_per_s = spec["batch"] / step
    tokens_per_pair = (timer.tokens[-1] - timer.tokens[warmup - 1]) / steps / spec["batch"]
    patches = 32 * 32 if shape != "tiny" else 256
    useful = 6 * n_lm * tokens_per_pair + 2 * n_vit * patches
    reference_per_pair = reference_seconds / len(dataset)
    all_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    losses = all_losses[warmup:]
    return {
        "config": name, "shape": shape, "family": family, "device": device, "batch": spec["batch"],
        "activation_checkpointing": spec["checkpointing"], "step_s": round(step, 4),
        "pairs_per_s": round(pairs_per_s, 3), "lm_tokens_per_s": round(pairs_per_s * tokens_per_pair),
        "tokens_per_pair": round(tokens_per_pair), "reference_pass_s_per_pair": round(reference_per_pair, 4),
        "pairs_per_s_3_epochs": round(3 / (3 / pairs_per_s + reference_per_pair), 3),
        "peak_GiB": round((torch.cuda.max_memory_allocated() if cuda else
                           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2),
        "mfu": round(pairs_per_s * useful / PEAK_FLOPS[device], 4) if device in PEAK_FLOPS else None,
        "n_lm": n_lm, "n_vit": n_vit, "losses": [round(x, 5) for x in losses],
        "first_loss": round(all_losses[0], 5), "ref_batch_size": ref_factor * spec["batch"],
    }  # fmt: skip


def child_result(command: list[str], env: dict[str, str]) -> tuple[dict | None, str]:
    """Run one configuration in a child process: its ``RESULT {json}`` line parsed (None if it failed), and its
    stderr."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return None, done.stderr
    return json.loads(lines[-1][len("RESULT ") :]), done.stderr


def emit(result: dict, out: Path | None, log: Log) -> None:
    """Print one result as a JSON line, append it to ``out`` when given, and to the results log with its
    provenance."""
    print(json.dumps(result), flush=True)
    if out:
        with out.open("a") as file:
            file.write(json.dumps(result) + "\n")
    log.append(result)


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", *SHAPES])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="tiny model family (--shape tiny)")
    parser.add_argument("--configs", help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers on CUDA")
    parser.add_argument("--ref-factor", type=int, default=2, help="reference-pass batch = this x the training batch")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run each configuration in its own process and print one JSON line each, then a Markdown table."""
    args = make_parser().parse_args(argv)
    if args.child:
        result = run_config(
            args.shape, args.child, args.device, args.steps, args.warmup, args.ref_factor, args.workers, args.family
        )
        print("RESULT " + json.dumps(result))
        return
    log = Log("vlfeedback_kit.training.bench", argv, args.results_dir)
    results = []
    for name in args.configs.split(",") if args.configs else DEFAULT_CONFIGS[args.device]:
        command = [
            sys.executable,
            "-m",
            "vlfeedback_kit.training.bench",
            "--shape",
            args.shape,
            "--device",
            args.device,
            "--family",
            args.family,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--ref-factor",
            str(args.ref_factor),
            "--workers",
            str(args.workers),
            "--child",
            name,
        ]
        result, stderr = child_result(command, {**os.environ, "TQDM_DISABLE": "1"})
        if result is None:
            result = {"config": name, "shape": args.shape, "family": args.family,
                      "error": stderr.strip().splitlines()[-1:]}  # fmt: skip
        results.append(result)
        emit(result, args.out, log)
    print("\n| config | batch | ckpt | step s | pairs/s | pairs/s 3 ep | LM tokens/s | peak GiB | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['config']} | failed: {r['error']} |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"| {r['config']} | {r['batch']} | {r['activation_checkpointing']} | {r['step_s']} | {r['pairs_per_s']} "
            f"| {r['pairs_per_s_3_epochs']} | {r['lm_tokens_per_s']:,} | {r['peak_GiB']} | {mfu} |"
        )


if __name__ == "__main__":
    main()
