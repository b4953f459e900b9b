"""Encode each image once per DPO step: for chosen and rejected, and for the policy and the reference.

TRL's vision collator repeats every image for the chosen and rejected halves of a batch, so the processor prepares
each image twice and the vision tower encodes it twice in the policy forward and twice more in the reference
forward. Two small pieces remove that work without touching TRL's loss:

- :class:`ImageOnceProcessor` wraps the processor the collator calls: when the images and prompts of the second half
  are the very objects of the first half (how TRL builds them), it processes the first half only and repeats the
  per-row outputs, leaving one ``pixel_values`` entry per unique image.
- :class:`ImageFeatureSharing` is a forward pre-hook on the VLM's inner model: given those unique pixel values it
  runs the vision tower once, repeats the features for both halves and passes them as ``mm_encoder_outputs``. When
  the vision tower is frozen the features are computed without a graph and memoised for the step, so the reference
  forward reuses them; when it trains, autograd accumulates the two uses into one gradient.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

PER_IMAGE_KEYS = frozenset({"pixel_values"})


class ImageOnceProcessor:
    """A processor proxy that prepares repeated (image, prompt) halves once; everything else is delegated."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, images: list | None = None, text: list | None = None, **kwargs: Any) -> Any:
        half = len(text) // 2 if text is not None else 0
        repeated = (
            images is not None
            and text is not None
            and len(images) == len(text) == 2 * half > 0
            and all(images[i] is images[i + half] and text[i] is text[i + half] for i in range(half))
        )
        if not repeated:
            return self._processor(images=images, text=text, **kwargs)
        out = self._processor(images=images[:half], text=text[:half], **kwargs)
        for key in list(out.keys()):
            if key not in PER_IMAGE_KEYS and isinstance(out[key], torch.Tensor):
                out[key] = torch.cat([out[key], out[key]], dim=0)
        return out


def vision_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the vision tower and projector (see ``vlfeedback_kit.training.freeze.VISION_MODULES``)."""
    from vlfeedback_kit.training.freeze import is_vision_parameter

    return [p for name, p in model.named_parameters() if is_vision_parameter(name)]


def inner_vlm(model: torch.nn.Module) -> torch.nn.Module:
    """The module that owns ``get_image_features`` and accepts ``mm_encoder_outputs`` (e.g. ``Qwen2VLModel``)."""
    for module in model.modules():
        is_inner = hasattr(module, "get_image_features") and not hasattr(module, "lm_head")
        if is_inner and "mm_encoder_outputs" in inspect.signature(module.forward).parameters:
            return module
    raise ValueError(
        f"{type(model).__name__} has no inner model accepting `mm_encoder_outputs` (transformers >= 5.17 VLMs do); "
        "set `share_image_features=False`"
    )


class ImageFeatureSharing:
    """Forward pre-hook computing each unique image's features once per step (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = inner_vlm(model)
        self.frozen = not any(p.requires_grad for p in vision_parameters(model))
        self.encoded_images = 0
        self.reused = 0
        # (the pixel_values tensor itself, its version, its features): holding the tensor keeps its memory from being
        # reused by the next batch, so identity cannot match a different batch (an address-based key could, since
        # allocators hand the freed block of one batch to the next batch of the same shape).
        self._memo: tuple[torch.Tensor, int, Any] | None = None
        self._handle = self.inner.register_forward_pre_hook(self._hook, with_kwargs=True)

    def remove(self) -> None:
        """Uninstall the hook."""
        self._handle.remove()

    def _unique_count(self, kwargs: dict) -> int | None:
        """How many unique images ``pixel_values`` holds when its rows are repeated in halves, else None."""
        pixel_values = kwargs.get("pixel_values")
        ids = kwargs.get("input_ids")
        if pixel_values is None or ids is None or ids.shape[0] % 2:
            return None
        grid = kwargs.get("image_grid_thw")
        if grid is not None:  # Qwen-VL family: pixel_values are patches of all images, one grid row per image
            half = grid.shape[0] // 2
            patches = int(grid[:half].prod(-1).sum())
            same = grid.shape[0] == 2 * half and torch.equal(grid[:half], grid[half:])
            return half if same and pixel_values.shape[0] == patches else None
        return pixel_values.shape[0] if 2 * pixel_values.shape[0] == ids.shape[0] else None

    def _features(self, pixel_values: torch.Tensor, kwargs: dict, unique: int) -> Any:
        config = self.inner.config
        if kwargs.get("image_grid_thw") is not None:
            return self.inner.get_image_features(pixel_values, kwargs["image_grid_thw"][:unique], return_dict=True)
        return self.inner.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=getattr(config, "vision_feature_layer", None),
            vision_feature_select_strategy=getattr(config, "vision_feature_select_strategy", None),
            return_dict=True,
        )

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        unique = self._unique_count(kwargs)
        if unique is None:
            return None
        pixel_values = kwargs["pixel_values"]
        memo = self._memo
        if self.frozen and memo is not None and memo[0] is pixel_values and memo[1] == pixel_values._version:
            features = memo[2]
            self.reused += unique
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                features = self._features(pixel_values, kwargs, unique)
            self.encoded_images += unique
            self._memo = (pixel_values, pixel_values._version, features) if self.frozen else None
        pooled = list(features.pooler_output)
        shared = type(features)(pooler_output=tuple(pooled + pooled))
        kwargs = {**kwargs, "pixel_values": None, "mm_encoder_outputs": {"image": shared}}
        return args, kwargs
