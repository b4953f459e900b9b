"""What the kit knows per VLM family, in one table: where the vision side lives and which speedups are refused, why.

The kit's mechanisms are family-agnostic — image sharing calls ``get_image_features`` with the inputs its signature
takes and repeats every per-image output (:mod:`.shared_images`), prefix sharing takes positions from
``get_rope_index`` when the model has M-RoPE (:mod:`.prefix_sharing`), the activation levers act on PEFT and aten ops
(:mod:`.activations`) — so a family row holds data only: its vision module names (frozen, never LoRA targets) and,
for each speedup it cannot run, the reason. Every family listed here has a tiny model
(``vlfeedback tiny-model --family NAME``) and CPU tests of each speedup it allows (``tests/test_families.py``); a
speedup turned on for a family that refuses it is an error naming the family and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

SPEEDUPS: tuple[str, ...] = (
    "ref_cache",
    "share_image_features",
    "share_prompt_prefix",
    "save_matmuls",
    "share_lora_inputs",
)
"""The kit's speedups, by config field (``save_matmuls`` is ``checkpoint_policy: save_matmuls``)."""


@dataclass(frozen=True)
class Family:
    """One VLM family (a transformers ``model_type``)."""

    name: str
    architecture: str
    vision_modules: tuple[str, ...]
    refused: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def reason(self, speedup: str) -> str | None:
        """Why ``speedup`` is off for this family, or None when it is supported and tested."""
        return self.refused.get(speedup)


GEMMA3_BIDIRECTIONAL = (
    "Gemma 3 attends bidirectionally among each image's tokens, a mask the model builds from token_type_ids; the "
    "packed 4-D mask of prompt-prefix sharing would replace it with a causal one and change the numbers"
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("qwen2_vl", "Qwen2VLForConditionalGeneration", ("visual",)),
        Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", ("visual",)),
        Family("llava", "LlavaForConditionalGeneration", ("vision_tower", "multi_modal_projector")),
        Family("qwen3_vl", "Qwen3VLForConditionalGeneration", ("visual",)),
        Family(
            "gemma3",
            "Gemma3ForConditionalGeneration",
            ("vision_tower", "multi_modal_projector"),
            MappingProxyType({"share_prompt_prefix": GEMMA3_BIDIRECTIONAL}),
        ),
        Family("idefics3", "Idefics3ForConditionalGeneration", ("vision_model", "connector")),
        Family(
            "llava_onevision",
            "LlavaOnevisionForConditionalGeneration",
            ("vision_tower", "multi_modal_projector", "image_newline"),
        ),
        Family("internvl", "InternVLForConditionalGeneration", ("vision_tower", "multi_modal_projector")),
    )
}
"""The table: family name (``config.model_type``) -> facts."""


def enabled_speedups(args: Any) -> list[str]:
    """The speedups a ``SilkieDPOConfig`` turns on (``ref_cache`` counts only when the trainer is given a cache)."""
    on = {
        "ref_cache": getattr(args, "ref_cache", False),
        "share_image_features": getattr(args, "share_image_features", False),
        "share_prompt_prefix": getattr(args, "share_prompt_prefix", False),
        "save_matmuls": getattr(args, "checkpoint_policy", "full") == "save_matmuls",
        "share_lora_inputs": getattr(args, "share_lora_inputs", False),
    }
    return [name for name in SPEEDUPS if on[name]]


def family_of(model: Any) -> str | None:
    """The ``model_type`` of a (PEFT-wrapped) transformers model."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def check_speedups(model_type: str | None, speedups: list[str]) -> None:
    """Refuse a speedup the family cannot run (ValueError naming the family, the speedup and the reason); warn once
    for a family outside the table, whose speedups are family-agnostic but unverified."""
    family = FAMILIES.get(model_type or "")
    if family is None:
        if speedups and model_type:
            logger.warning(
                "%s is not among the tested families (%s): the kit's speedups (%s) are family-agnostic but unverified "
                "for it; compare one step with TRL's stock DPOTrainer before a long run",
                model_type,
                ", ".join(FAMILIES),
                ", ".join(speedups),
            )
        return
    refused = [(name, family.reason(name)) for name in speedups if family.reason(name)]
    if refused:
        name, reason = refused[0]
        raise ValueError(f"{name} is not available for the {family.name} family: {reason}. Set {_off(name)}.")


def _off(speedup: str) -> str:
    return "checkpoint_policy full (or save_attention)" if speedup == "save_matmuls" else f"{speedup} false"


def vision_modules() -> tuple[str, ...]:
    """Every family's vision-side module names (deduplicated, in table order)."""
    return tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.vision_modules))


def support_table() -> str:
    """The family x speedup table of docs/families.md (Markdown): "tested" or the reason a speedup is off."""
    header = "| family | architecture | " + " | ".join(f"`{s}`" for s in SPEEDUPS) + " |"
    lines = [header, "|" + "---|" * (len(SPEEDUPS) + 2)]
    for family in FAMILIES.values():
        cells = [family.reason(s) and f"off: {family.reason(s)}" or "tested" for s in SPEEDUPS]
        lines.append(f"| `{family.name}` | `{family.architecture}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(support_table())
