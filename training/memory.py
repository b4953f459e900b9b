"""Activation-memory accounting of one DPO training step, on the CPU, for GPU shapes.

    python -m vlfeedback_kit.training.memory --shape qwen2-vl-7b --layers 2 \
        --configs trl-b1,kit-b1,kit-b1-sac,kit-b1-prefix-sac

A GPU step's peak memory is the weights and optimizer state plus the activations kept for the backward pass. What
is kept does not depend on the device, so it can be measured on the CPU at the real widths with a few language-
model layers: this script builds the step benchmark's model and trainer of each configuration (bf16 autocast, the
Silkie LoRA, the same synthetic rows) and runs one training forward, measuring

- the growth of the resident set across each decoder layer (``MALLOC_MMAP_THRESHOLD_`` makes large tensors map and
  unmap memory at once, so RSS follows live tensors) — valid for every checkpointing policy;
- every distinct storage saved through autograd's saved-tensor hooks, by the module that saved it (a breakdown of
  what a layer keeps; checkpointed regions keep theirs outside these hooks).

Per-layer bytes are scaled to the full depth and to the batch::

    peak(B) ~ fixed + B x (layers x per_layer + rest)      per pair of the accounted pair's padded length
            = fixed + B x layout_tokens_per_pair x per_token

``fixed`` is the bf16 weights plus fp32 LoRA weights, gradients and Adam moments; ``layout_tokens`` are the tokens the
language model really runs, padding included (2 padded rows per pair, or one packed row with prompt-prefix
sharing). It predicts the peaks measured on a GPU on 2026-11-26 within 1-4% (BENCHMARKS.md). Transient
buffers of the backward pass (one layer at a time) are not counted.

Each configuration's result is appended, with the commit, versions, device and command, to
``benchmarks/results/training.memory.jsonl`` (:mod:`vlfeedback_kit.benchlog`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser
from vlfeedback_kit.training.compat import prepare_inputs

LAYER = re.compile(r"\.layers\.(\d+)\.")
WRAPPERS = re.compile(r"^(base_model\.model\.)?(model\.)?(language_model\.)?")


def module_kind(name: str) -> str:
    """``model.language_model.layers.3.mlp.up_proj.lora_A.default`` -> ``layers.N.mlp.up_proj.lora_A``."""
    name = WRAPPERS.sub("", name)
    name = LAYER.sub(".layers.N.", "." + name).lstrip(".")
    return re.sub(r"\.default$", "", name) or "(top level)"


def resident_bytes() -> int:
    """The process's resident set size (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def saved_activations(model, step) -> tuple[dict[str, int], list[int], int, Any]:
    """What ``step()``'s forward keeps alive for the backward pass, measured two ways.

    - by module kind: bytes of the distinct non-parameter storages saved through autograd's saved-tensor hooks,
      each counted once, for the first module that saved it (checkpointed regions keep their tensors outside these
      hooks, so they are not seen here);
    - by decoder layer: growth of the resident set across each ``*DecoderLayer`` forward, and across the whole
      forward. Exact for any checkpointing policy when large allocations are returned to the system at once
      (``MALLOC_MMAP_THRESHOLD_``, which ``main`` sets for its child processes).

    Returns ``({kind: bytes}, [bytes per decoder layer], forward bytes, the loss)``; the caller runs the backward."""
    import torch

    parameters = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    stack: list[str] = ["(top level)"]
    seen: dict[int, tuple[int, str]] = {}
    layer_growth: list[int] = []
    handles = []

    def leave(module, args, output) -> None:
        stack.pop()

    def layer_enter(module, args) -> None:
        layer_growth.append(-resident_bytes())

    def layer_leave(module, args, output) -> None:
        layer_growth[-1] += resident_bytes()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(leave))
        if type(module).__name__.endswith("DecoderLayer"):
            handles.append(module.register_forward_pre_hook(layer_enter))
            handles.append(module.register_forward_hook(layer_leave))

    def pack(tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer and pointer not in parameters and pointer not in seen:
            dtype = str(tensor.dtype).removeprefix("torch.")
            seen[pointer] = (storage.nbytes(), f"{module_kind(stack[-1])} [{dtype}]")
        return tensor

    before = resident_bytes()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = step()
    finally:
        for handle in handles:
            handle.remove()
    forward = resident_bytes() - before
    by_kind: dict[str, int] = defaultdict(int)
    for size, kind in seen.values():
        by_kind[kind] += size
    return dict(by_kind), layer_growth, forward, loss


def layout_length(inputs: dict, packed: bool) -> int:
    """Tokens the language model really runs for a batch, padding included: 2B padded rows, or with prompt-prefix
    sharing B packed rows of the longest prompt + chosen + 1 + rejected. Activation memory is proportional to it."""
    mask = inputs["attention_mask"]
    if not packed:
        return mask.numel()
    lengths, completion = mask.sum(-1), inputs["completion_mask"].sum(-1)
    pairs = len(lengths) // 2
    packed_lengths = lengths[:pairs] + completion[pairs:] + 1
    return int(packed_lengths.max()) * pairs


def fixed_bytes(shape: str, trainable: float) -> float:
    """Fixed bytes of the full-depth shape: bf16 weights of the public model (counted on the meta device) plus fp32
    LoRA weights, gradients and Adam's two moments."""
    from vlfeedback_kit.training.bench import build_model

    with tempfile.TemporaryDirectory(prefix="vlf-memory-meta-") as tmp:
        model, _ = build_model(shape, Path(tmp), "cpu", meta=True)
        weights = sum(p.numel() for p in model.parameters())
    return weights * 2 + trainable * 4 * 4


def account(shape: str, name: str, layers: int, vision_depth: int) -> dict:
    """One configuration on ``layers`` language-model layers: what a pair keeps per layer and in the rest."""
    from vlfeedback_kit.training.bench import CONFIGS, SHAPES, make_trainer

    if shape not in SHAPES:
        raise SystemExit(f"--shape must be one of {', '.join(SHAPES)}")
    batch = CONFIGS[name]["batch"]
    work = Path(tempfile.mkdtemp(prefix="vlf-memory-"))
    trainer, _ = make_trainer(
        shape, name, "cpu", work, batch, 1, ref_factor=1, layers=layers, vision_depth=vision_depth
    )
    if getattr(trainer, "ref_cache", None) is not None:
        trainer.precompute_reference()
    if trainer.args.activation_checkpointing:  # what Trainer.train does first
        kwargs = dict(trainer.args.activation_checkpointing_kwargs or {"use_reentrant": False})
        every = kwargs.pop("every_n_layers", 1)
        trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    inputs = prepare_inputs(trainer, next(iter(trainer.get_train_dataloader())))
    tokens = int(inputs["attention_mask"].sum())
    layout_tokens = layout_length(inputs, getattr(trainer.args, "share_prompt_prefix", False))
    model = trainer.model
    model.train()

    def step():
        with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
            return trainer.compute_loss(model, dict(inputs))

    step().backward()  # warm-up: first-call allocations (caches, workspaces) are not activations
    model.zero_grad(set_to_none=False)
    by_kind, layer_growth, forward, loss = saved_activations(model, step)
    loss.backward()
    per_layer = sorted(layer_growth)[len(layer_growth) // 2]  # median layer
    rest = forward - sum(layer_growth)
    full_layers = SHAPES[shape]["text"]["num_hidden_layers"]
    full_depth = per_layer * full_layers + rest  # bytes kept by the whole batch at the model's real depth
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * full_layers / layers
    hooked_layer = sum(v for k, v in by_kind.items() if k.startswith("layers.N.")) / layers
    top = sorted(((k, v) for k, v in by_kind.items() if v >= 2**20 * batch / 10), key=lambda kv: -kv[1])
    return {
        "config": name, "shape": shape, "layers_run": layers, "layers_full": full_layers, "batch": batch,
        "lm_tokens": tokens, "tokens_per_pair": tokens / batch, "layout_tokens_per_pair": layout_tokens / batch,
        "per_layout_token_KiB": round(full_depth / layout_tokens / 2**10, 1),
        "per_pair_per_layer_MiB": round(per_layer / batch / 2**20, 2),
        "per_pair_per_layer_saved_by_hooks_MiB": round(hooked_layer / batch / 2**20, 2),
        "per_pair_rest_MiB": round(rest / batch / 2**20, 2),
        "per_pair_full_GiB": round(full_depth / batch / 2**30, 3),
        "fixed_full_GiB": round(fixed_bytes(shape, trainable) / 2**30, 2),
        "saved_by_hooks_per_pair_MiB": {k: round(v / batch / 2**20, 2) for k, v in top},
        "layer_growth_MiB": [round(g / 2**20, 1) for g in layer_growth],
    }  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    """The tool's flags."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2-vl-7b")
    parser.add_argument("--configs", default="kit-b1,kit-b1-prefix")
    parser.add_argument("--layers", type=int, default=2, help="language-model layers to run (scaled to full depth)")
    parser.add_argument("--vision-depth", type=int, default=1, help="ViT blocks (frozen: they keep nothing)")
    parser.add_argument("--batches", default="2,4,8,16", help="batch sizes to predict peaks for")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Account each configuration in its own process; print JSON lines and predicted peaks."""
    args = make_parser().parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(account(args.shape, args.child, args.layers, args.vision_depth)))
        return
    from vlfeedback_kit.training.bench import CONFIGS, child_result, emit

    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; see vlfeedback_kit.training.bench.CONFIGS")
        if CONFIGS[name].get("full_layers"):
            raise SystemExit(
                f"{name}: a mix of fully and selectively checkpointed layers cannot be measured on {args.layers} "
                "layers; account the -sac and -ckpt configurations and combine them per layer (BENCHMARKS.md)"
            )
    log = Log("vlfeedback_kit.training.memory", argv, args.results_dir)
    env = {**os.environ, "TQDM_DISABLE": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results = []
    for name in args.configs.split(","):
        command = [sys.executable, "-m", "vlfeedback_kit.training.memory", "--shape", args.shape,
                   "--layers", str(args.layers),
                   "--vision-depth", str(args.vision_depth), "--child", name]  # fmt: skip
        result, stderr = child_result(command, env)
        if result is None:
            raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
        results.append(result)
        emit(result, args.out, log)
    batches = [int(b) for b in args.batches.split(",")]
    head = " | ".join(f"peak B={b}" for b in batches)
    print(f"\n| config | layout tokens/pair | KiB/token | MiB/pair/layer | GiB/pair | fixed GiB | {head} |")
    print("|---" * (6 + len(batches)) + "|")
    for r in results:
        peaks = " | ".join(f"{r['fixed_full_GiB'] + b * r['per_pair_full_GiB']:.1f}" for b in batches)
        print(
            f"| {r['config']} | {r['layout_tokens_per_pair']:.0f} | {r['per_layout_token_KiB']} | "
            f"{r['per_pair_per_layer_MiB']} | {r['per_pair_full_GiB']} | {r['fixed_full_GiB']} | {peaks} |"
        )
    print(
        "\nPeaks are for pairs of the accounted pair's length; for other lengths: fixed GiB + B x (layout tokens "
        "per pair) x KiB/token, with the layout tokens of the batch as padded (see BENCHMARKS.md)."
    )


if __name__ == "__main__":
    main()
