"""Explicit freezing for VLM DPO: the vision tower and projector stay frozen, LoRA never touches them."""

from __future__ import annotations

import re

import torch

from vlfeedback_kit.training.families import vision_modules

VISION_MODULES: tuple[str, ...] = tuple(dict.fromkeys(("merger", *vision_modules())))
"""Module names that belong to the vision side in the supported families (``families.FAMILIES``: towers,
projectors / connectors, LLaVA-OneVision's ``image_newline``)."""
LANGUAGE_LINEAR_NAMES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_VISION = re.compile(r"(^|\.)(" + "|".join(VISION_MODULES) + r")(\.|$)")


def is_vision_parameter(name: str) -> bool:
    """Whether a parameter or module name lies in the vision tower or the projector."""
    return _VISION.search(name) is not None


def freeze_vision(model: torch.nn.Module) -> int:
    """Set ``requires_grad=False`` on every vision-side parameter; returns how many tensors were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if is_vision_parameter(name):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


def language_lora_targets(names: tuple[str, ...] = LANGUAGE_LINEAR_NAMES) -> str:
    """A PEFT ``target_modules`` regex matching the language model's projections and nothing on the vision side."""
    vision = "|".join(VISION_MODULES)
    return rf"^(?!(.*\.)?({vision})\.).*\.({'|'.join(names)})$"


def assert_no_vision_lora(model: torch.nn.Module) -> None:
    """Refuse a PEFT model whose adapters reach the vision tower or projector."""
    hits = sorted(
        {
            name.rsplit(".lora_", 1)[0]
            for name, _ in model.named_parameters()
            if ".lora_" in name and is_vision_parameter(name)
        }
    )
    if hits:
        raise ValueError(
            f"LoRA adapters were placed on {len(hits)} vision modules (e.g. {hits[0]}); the recipe freezes the vision "
            "side. Use the default `lora_target_modules` (language model only) or list language-model modules only."
        )
