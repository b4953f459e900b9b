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

from typing import Any

import torch

from vlfeedback_kit.serving import NOT_FOR_THE_LANGUAGE_MODEL, PER_IMAGE_KEYS, image_features, repeat_features
from vlfeedback_kit.training.compat import image_token_id, inner_vlm, pooled_features, repeated_half


def repeat_halves(value: Any) -> Any:
    """Encoder outputs for both halves (chosen and rejected): the serving layer's repeat, twice over."""
    return repeat_features(value, 2)


def feature_tokens(pooled: Any) -> int:
    """How many language-model positions pooled image features fill (a tensor or a sequence of per-image ones)."""
    if isinstance(pooled, torch.Tensor):
        return pooled.numel() // pooled.shape[-1]
    return sum(feature_tokens(item) for item in pooled)


class ImageOnceProcessor:
    """A processor proxy that prepares repeated (image, prompt) halves once; everything else is delegated."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, images: list | None = None, text: list | None = None, **kwargs: Any) -> Any:
        half = repeated_half(images, text)  # a call with images in another layout is a CompatError, never a no-op
        if not half:
            return self._processor(images=images, text=text, **kwargs)
        return repeat_rows(self._processor(images=images[:half], text=text[:half], **kwargs))


def repeat_rows(batch: Any) -> Any:
    """A processor batch for its rows twice over (first half, then second half), per-image keys left unique: the
    layout :class:`ImageFeatureSharing` expands inside the model."""
    for key in list(batch.keys()):
        if key not in PER_IMAGE_KEYS and isinstance(batch[key], torch.Tensor):
            batch[key] = torch.cat([batch[key], batch[key]], dim=0)
    return batch


def vision_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the vision tower and projector (see ``vlfeedback_kit.training.freeze.VISION_MODULES``)."""
    from vlfeedback_kit.training.freeze import is_vision_parameter

    return [p for name, p in model.named_parameters() if is_vision_parameter(name)]


def encoded_twice_over(model: torch.nn.Module, batch: Any) -> dict:
    """``mm_encoder_outputs`` for a batch of ``batch``'s rows twice over (see :func:`repeat_rows`), each image
    encoded once: the features are computed on ``batch`` and repeated, without their hidden states."""
    features = image_features(inner_vlm(model), batch)
    return {"image": type(features)(
        **{k: repeat_halves(v) for k, v in features.items() if k not in NOT_FOR_THE_LANGUAGE_MODEL})}  # fmt: skip


class ImageFeatureSharing:
    """Forward pre-hook computing each unique image's features once per step (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = inner_vlm(model)
        self.image_token = image_token_id(self.inner.config)
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

    def _grid_half(self, kwargs: dict) -> torch.Tensor | None | bool:
        """Qwen-VL family: the first half's ``image_grid_thw`` when ``pixel_values`` holds that half's patches only
        (False when it does not); None for families without a grid."""
        grid = kwargs.get("image_grid_thw")
        if grid is None:
            return None
        half = grid.shape[0] // 2
        patches = int(grid[:half].prod(-1).sum())
        same = grid.shape[0] == 2 * half and torch.equal(grid[:half], grid[half:])
        return grid[:half] if same and kwargs["pixel_values"].shape[0] == patches else False

    def _placeholders(self, ids: torch.Tensor) -> int:
        return int((ids == self.image_token).sum())

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        pixel_values, ids = kwargs.get("pixel_values"), kwargs.get("input_ids")
        if pixel_values is None or ids is None or ids.shape[0] % 2:
            return None
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            return None  # prefix sharing's packed rows carry each image once: nothing to share, nothing to encode
        grid = self._grid_half(kwargs)
        if grid is False:
            return None
        memo = self._memo
        if self.frozen and memo is not None and memo[0] is pixel_values and memo[1] == pixel_values._version:
            features = memo[2]
            reused = True
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                features = image_features(self.inner, kwargs, grid)
            reused = False
            self._memo = (pixel_values, pixel_values._version, features) if self.frozen else None
        # family-agnostic check that these are the first half's images: their features fill half the placeholders
        pooled = pooled_features(features)
        if 2 * feature_tokens(pooled) != self._placeholders(ids):
            return None  # not a repeated batch (e.g. prefix sharing's packed rows): the model encodes pixel_values
        images = len(pooled)
        if reused:
            self.reused += images
        else:
            self.encoded_images += images
        shared = type(features)(
            **{k: repeat_halves(v) for k, v in features.items() if k not in NOT_FOR_THE_LANGUAGE_MODEL}
        )
        kwargs = {k: v for k, v in kwargs.items() if k not in PER_IMAGE_KEYS}
        kwargs["mm_encoder_outputs"] = {"image": shared}
        return args, kwargs
