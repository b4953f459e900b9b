"""Activation memory of a LoRA DPO step: what the kit keeps for the backward pass, and what it recomputes.

Measured with ``python -m training.memory`` on the 7B shape (see BENCHMARKS.md), a decoder layer without
checkpointing keeps ~250 KiB per token, most of it the MLP's 18,944-wide intermediates (gate, up, SiLU and their
product: four tensors), and one bf16 copy of each LoRA layer's input. Two levers, both exact:

- :func:`share_lora_inputs` — under bf16/fp16 autocast, PEFT casts each LoRA layer's input to the adapter's fp32
  dtype and autocast casts it straight back, so every LoRA layer saves its own bf16 copy of an input that q/k/v (and
  gate/up) share. Turning PEFT's cast off gives the same numbers (bf16 -> fp32 -> bf16 is the identity) and lets
  autograd keep one tensor.
- :func:`enable_checkpoint_policy` — selective activation checkpointing. ``save_matmuls`` keeps the outputs of the
  expensive matrix products (the base projections and attention) and recomputes everything else in the backward
  pass: norms, RoPE, SiLU, products, residual adds, and the rank-r LoRA up-projections, whose full-width outputs
  would cost as much memory as the base outputs for ~1/50 of their FLOPs. A layer then keeps about half of what it
  keeps without checkpointing, for a recompute that is mostly memory-bound element-wise work, against full
  checkpointing's second forward pass. ``save_attention`` is TRL's SFT policy (keep attention, recompute the rest);
  ``full`` is torch's default (keep only each layer's input).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.utils.checkpoint

CHECKPOINT_POLICIES = ("full", "save_attention", "save_matmuls")
_MATMULS = ("mm", "addmm", "bmm", "baddbmm")
_ATTENTION = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def share_lora_inputs(model: torch.nn.Module) -> int:
    """Turn off PEFT's per-layer input cast to the adapter dtype; returns how many LoRA layers changed.

    Only valid under autocast (bf16/fp16 mixed precision), where autocast casts inputs and weights itself; the
    trainer calls it only then."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "_cast_input_dtype"):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def _packets(names: tuple[str, ...]) -> set:
    return {packet.default for name in names if (packet := getattr(torch.ops.aten, name, None)) is not None}


def save_matmuls_policy(recompute_reduction: int = 0):
    """SAC policy: keep attention outputs and the outputs of matrix products whose reduction dimension exceeds
    ``recompute_reduction`` (the largest LoRA rank: LoRA's up-projections are recomputed); recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        if op in _ATTENTION_OPS or "flash_attn" in str(op):
            return CheckpointPolicy.MUST_SAVE
        if op in _MATMUL_OPS:
            left = args[1] if op in _BIASED else args[0]
            if left.shape[-1] > recompute_reduction:
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def lora_rank(model: torch.nn.Module) -> int:
    """The largest LoRA rank in ``model`` (0 without LoRA)."""
    layers = [module.r for module in model.modules() if isinstance(getattr(module, "r", None), dict)]
    return max((rank for ranks in layers for rank in ranks.values()), default=0)


_MATMUL_OPS = _packets(_MATMULS)
_BIASED = _packets(("addmm", "baddbmm"))
_ATTENTION_OPS = _packets(_ATTENTION)


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
        return
    if policy == "save_attention":
        from trl.models import enable_selective_activation_checkpointing

        # transformers 5 routes activation_checkpointing_enable through this wrapped deprecated alias
        enable_selective_activation_checkpointing(_pretrained(model))
        return
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    target = _pretrained(model)
    if getattr(target.activation_checkpointing_enable, "_kit_policy", None) == policy:
        return
    original = target.activation_checkpointing_enable
    context_fn = partial(create_selective_checkpoint_contexts, save_matmuls_policy(lora_rank(model)))

    def activation_checkpointing_enable(activation_checkpointing_kwargs=None, **kwargs):
        checkpoint_kwargs = dict(activation_checkpointing_kwargs or {})
        checkpoint_kwargs["use_reentrant"] = False  # selective checkpointing works on saved-tensor hooks only
        plain = partial(torch.utils.checkpoint.checkpoint, **checkpoint_kwargs)
        checkpoint_kwargs["context_fn"] = context_fn
        result = original(activation_checkpointing_kwargs=checkpoint_kwargs, **kwargs)
        for layer in _spread(checkpointed_language_layers(target), full_layers):
            layer._gradient_checkpointing_func = plain
        return result

    activation_checkpointing_enable._kit_policy = policy
    target.activation_checkpointing_enable = activation_checkpointing_enable


def checkpointed_language_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's decoder layers that activation checkpointing is on for, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from training.freeze import is_vision_parameter

    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, GradientCheckpointingLayer)
        and getattr(module, "gradient_checkpointing", False)
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
