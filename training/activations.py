"""Activation memory of a LoRA DPO step: what the kit keeps for the backward pass, and what it recomputes.

Measured with ``python -m vlfeedback_kit.training.memory`` on the 7B shape (see BENCHMARKS.md), a decoder layer without
checkpointing keeps ~250 KiB per token, most of it the MLP's 18,944-wide intermediates (gate, up, SiLU and their
product: four tensors), and one bf16 copy of each LoRA layer's input. Two levers that leave the numbers unchanged:

- :func:`share_lora_inputs` — under bf16/fp16 autocast, PEFT casts each LoRA layer's input to the adapter's fp32
  dtype and autocast casts it straight back, so every LoRA layer saves its own bf16 copy of an input that q/k/v (and
  gate/up) share. Turning PEFT's cast off gives the same numbers (bf16 -> fp32 -> bf16 is the identity) and lets
  autograd keep one tensor. Applied only without LoRA dropout (TRL's default), and only while training.
- :func:`enable_checkpoint_policy` — selective activation checkpointing. ``save_matmuls`` keeps the outputs of the
  expensive matrix products (the base projections and attention) and recomputes everything else in the backward
  pass: norms, RoPE, SiLU, products, residual adds, and the rank-r LoRA up-projections, whose full-width outputs
  would cost as much memory as the base outputs for ~1/50 of their FLOPs. A layer then keeps about half of what it
  keeps without checkpointing, for a recompute that is mostly memory-bound element-wise work, against full
  checkpointing's second forward pass. ``save_attention`` is TRL's SFT policy (keep attention, recompute the rest);
  ``full`` is torch's default (keep only each layer's input). Random ops (LoRA dropout) replay the same random
  state when recomputed, so the gradients are those of the un-checkpointed step.
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial

import torch
import torch.utils.checkpoint

from vlfeedback_kit.training.compat import (
    aten_ops,
    checkpointing_enable,
    checkpointing_on,
    disable_input_casting,
    lora_dropout_rates,
    lora_ranks,
    selective_checkpointing,
    set_checkpoint_function,
)

CHECKPOINT_POLICIES = ("full", "save_attention", "save_matmuls")


MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm")
BIASED_OPS = ("addmm", "baddbmm")  # (bias, left, right): the left operand is the second argument
ATTENTION_OPS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def lora_dropout_active(model: torch.nn.Module) -> bool:
    """Whether any LoRA layer applies dropout (TRL's ``disable_dropout`` sets them all to 0)."""
    return any(rate > 0 for rate in lora_dropout_rates(model))


class LoraInputSharing:
    """Switches PEFT's per-layer cast of each LoRA layer's input to the adapter dtype off (``on()``) and back
    (``off()``), through PEFT's public ``peft.helpers.disable_input_dtype_casting``.

    Only valid under autocast (bf16/fp16 mixed precision), where autocast casts inputs and weights itself, and exact
    only without LoRA dropout (with dropout each layer keeps its own dropped-out input anyway, and the dropout's
    scaling would round in bf16 instead of fp32); the trainer applies it only then, and only while it trains."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._context: ExitStack | None = None

    def on(self) -> None:
        if self._context is None:
            context = ExitStack()
            context.enter_context(disable_input_casting(self.model))
            self._context = context

    def off(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None


def save_matmuls_policy(recompute_reduction: int = 0):
    """SAC policy: keep attention outputs and the outputs of matrix products whose reduction dimension exceeds
    ``recompute_reduction`` (the largest LoRA rank: LoRA's up-projections are recomputed); recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    save, recompute = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE
    matmuls, biased, attention = aten_ops(*MATMUL_OPS), aten_ops(*BIASED_OPS), aten_ops(*ATTENTION_OPS)
    by_op: dict = {}  # every other op's decision depends on the op alone: decide it once (this runs for every op)

    def policy(ctx, op, *args, **kwargs):
        if op in matmuls:
            left = args[1] if op in biased else args[0]
            return save if left.shape[-1] > recompute_reduction else recompute
        decision = by_op.get(op)
        if decision is None:
            decision = by_op[op] = save if op in attention or "flash_attn" in str(op) else recompute
        return decision

    return policy


def lora_rank(model: torch.nn.Module) -> int:
    """The largest LoRA rank in ``model`` (0 without LoRA)."""
    return max(lora_ranks(model), default=0)


def enable_checkpoint_policy(model: torch.nn.Module, policy: str, full_layers: int = 0) -> None:
    """Make every later ``activation_checkpointing_enable`` on ``model`` use ``policy`` (see the module docstring).

    Like TRL's SFT selective checkpointing, the policy is injected by wrapping the model's enable method, so the
    non-serializable context function stays out of the training arguments; ``every_n_layers`` still applies. With
    ``save_matmuls``, ``full_layers`` language-model layers (spread evenly) use full checkpointing instead: a memory
    budget between the two policies, one layer at a time."""
    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoint_policy must be one of {', '.join(CHECKPOINT_POLICIES)}, not {policy!r}")
    if full_layers and policy != "save_matmuls":
        raise ValueError("full_checkpoint_layers only applies to checkpoint_policy save_matmuls")
    if policy == "full":
        _wrap_enable(_pretrained(model))  # only reads every_n_layers / offload back out of the kwargs
        return
    if policy == "save_attention":
        # transformers 5 routes activation_checkpointing_enable through this wrapped deprecated alias
        selective_checkpointing()(_pretrained(model))
        return
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    target = _pretrained(model)
    context_fn = partial(create_selective_checkpoint_contexts, save_matmuls_policy(lora_rank(model)))
    _wrap_enable(target, context_fn, full_layers)


def _wrap_enable(target: torch.nn.Module, context_fn=None, full_layers: int = 0) -> None:
    """Wrap ``target.activation_checkpointing_enable`` (once; re-wrapping replaces the settings): inject
    ``context_fn``, move ``full_layers`` layers to plain checkpointing, and read ``every_n_layers`` / ``offload`` out
    of the kwargs dict, where TRL's ``disable_gradient_checkpointing`` passes them back when it re-enables
    checkpointing after a reference forward (``torch.utils.checkpoint`` would otherwise swallow them)."""
    enable = checkpointing_enable(target)
    original = getattr(enable, "_kit_original", enable)

    def activation_checkpointing_enable(activation_checkpointing_kwargs=None, **kwargs):
        checkpoint_kwargs = dict(activation_checkpointing_kwargs or {})
        for key in ("every_n_layers", "offload"):
            if key in checkpoint_kwargs:
                kwargs.setdefault(key, checkpoint_kwargs.pop(key))
        if context_fn is not None:
            if kwargs.get("offload"):
                raise ValueError(
                    "checkpoint_policy save_matmuls keeps its tensors outside save_on_cpu: drop "
                    "activation_checkpointing_kwargs offload, or use checkpoint_policy full with offload"
                )
            checkpoint_kwargs["use_reentrant"] = False  # selective checkpointing works on saved-tensor hooks only
            plain = partial(torch.utils.checkpoint.checkpoint, **checkpoint_kwargs)
            checkpoint_kwargs["context_fn"] = context_fn
        result = original(activation_checkpointing_kwargs=checkpoint_kwargs or None, **kwargs)
        if context_fn is not None:
            for layer in _spread(checkpointed_language_layers(target), full_layers):
                set_checkpoint_function(layer, plain)
        return result

    activation_checkpointing_enable._kit_original = original
    target.activation_checkpointing_enable = activation_checkpointing_enable


def checkpointed_language_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's decoder layers that activation checkpointing is on for, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from vlfeedback_kit.training.freeze import is_vision_parameter

    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, GradientCheckpointingLayer)
        and checkpointing_on(module)
        and not is_vision_parameter(name)
    ]


def _spread(layers: list, count: int) -> list:
    """``count`` of ``layers``, evenly spaced (first and last included when count > 1)."""
    if count <= 0 or not layers:
        return []
    count = min(count, len(layers))
    if count == 1:
        return [layers[len(layers) // 2]]
    return [layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)]


def _pretrained(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under the PEFT and DDP wrappers: the one the Trainer enables checkpointing on."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model
