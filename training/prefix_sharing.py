"""Prompt-prefix sharing: run chosen and rejected of a pair as one packed sequence, so the prompt (and its image
tokens, most of a VLFeedback sequence) goes through the language model once instead of twice.

TRL's vision collator builds ``2B`` rows ``[prompt | chosen]`` then ``[prompt | rejected]``. :class:`PrefixSharing`
wraps the model TRL calls: it packs each pair as ``prompt | chosen | p' | rejected``, where ``p'`` repeats the
prompt's last token at the prompt's last position, and masks attention so the rejected branch sees the prompt and
itself but never the chosen answer (nor the original last prompt token, which ``p'`` stands in for). Every token keeps
the position it has in its own unpacked row (Qwen's 3-D M-RoPE positions included), so each branch computes what it
would alone; ``p'`` predicts the first rejected token exactly as the last prompt token does. The fused head's
per-token outputs are then scattered back into TRL's ``2B``-row layout, and TRL's loss and metrics run unchanged.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from vlfeedback_kit.training.compat import attn_implementation, fused_log_probs, inner_vlm, rope_index

PER_ROW_IMAGE_INPUTS = ("pixel_attention_mask", "image_sizes", "batch_num_images")
PER_TOKEN_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def _positions(rope_index: Any, kwargs: dict, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the unpacked rows: the model's M-RoPE (``rope_index``) for Qwen-VL rows, else 0..n-1 per row."""
    if kwargs.get("image_grid_thw") is not None:
        if rope_index is None:
            raise ValueError("share_prompt_prefix: image_grid_thw given to a model without M-RoPE (get_rope_index)")
        positions, _ = rope_index(
            input_ids,
            mm_token_type_ids=kwargs.get("mm_token_type_ids"),
            image_grid_thw=kwargs["image_grid_thw"],
            attention_mask=mask,
        )
        return positions  # (3, rows, length)
    return (mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0)  # (1, rows, length)


class PrefixSharing:
    """Callable standing in for the model in TRL's DPO forward (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.inner = inner_vlm(model)
        self.rope_index = rope_index(self.inner)  # Qwen-VL's M-RoPE; a family that has it and lost it is refused
        attention = attn_implementation(self.inner.config)
        if attention not in ("sdpa", "eager"):
            raise ValueError(
                f"share_prompt_prefix needs a custom 4-D attention mask, which attn_implementation={attention!r} "
                "ignores; use attn_implementation sdpa or eager, or set share_prompt_prefix false"
            )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **kwargs: Any):
        rows, length = input_ids.shape
        pairs = rows // 2
        grid, pixels = kwargs.get("image_grid_thw"), kwargs.get("pixel_values")
        one_image_each = (
            grid.shape[0] == rows if grid is not None else pixels is None or pixels.shape[0] in (pairs, rows)
        )
        if not one_image_each or kwargs.get("token_type_ids") is not None:
            raise ValueError(
                "share_prompt_prefix packs pairs with exactly one image each (no text-only or multi-image rows, no "
                "token_type_ids models); set share_prompt_prefix false for this dataset or model"
            )
        device = input_ids.device
        valid = attention_mask.bool()
        completion = labels != -100
        lengths = valid.sum(-1)
        prompt = torch.where(completion.any(-1), completion.float().argmax(-1), lengths)
        positions = _positions(self.rope_index, kwargs, input_ids, attention_mask)
        chosen_len = lengths[:pairs] - prompt[:pairs]
        rejected_len = lengths[pairs:] - prompt[pairs:]
        packed_len = int((prompt[:pairs] + chosen_len + 1 + rejected_len).max())

        ids = torch.full((pairs, packed_len), 0, dtype=input_ids.dtype, device=device)
        packed_labels = torch.full_like(ids, -100)
        pos = torch.zeros((positions.shape[0], pairs, packed_len), dtype=positions.dtype, device=device)
        mask = torch.zeros((pairs, 1, packed_len, packed_len), dtype=torch.bool, device=device)
        token_types = kwargs.get("mm_token_type_ids")
        packed_types = torch.zeros_like(ids) if token_types is not None else None
        sources = []  # (packed index tensor, TRL row, TRL index tensor) per branch, for scattering outputs back
        for i in range(pairs):
            p, c, r = int(prompt[i]), int(chosen_len[i]), int(rejected_len[i])
            j = i + pairs
            first = p + c  # where the rejected branch (p' then the rejected tokens) starts
            ids[i, :first] = input_ids[i, :first]
            ids[i, first] = input_ids[i, p - 1]
            ids[i, first + 1 : first + 1 + r] = input_ids[j, p : p + r]
            packed_labels[i, p:first] = labels[i, p:first]
            packed_labels[i, first + 1 : first + 1 + r] = labels[j, p : p + r]
            pos[:, i, :first] = positions[:, i, :first]
            pos[:, i, first] = positions[:, i, p - 1]
            pos[:, i, first + 1 : first + 1 + r] = positions[:, j, p : p + r]
            if packed_types is not None:
                packed_types[i, :p] = token_types[i, :p]
            end = first + 1 + r
            causal = torch.ones((end, end), dtype=torch.bool, device=device).tril()
            causal[first:, p - 1 : first] = (
                False  # the rejected branch never sees chosen (nor the prompt's last token)
            )
            mask[i, 0, :end, :end] = causal
            # shifted outputs: position t predicts token t+1; chosen from p-1.., rejected from p' (index first) on
            sources.append((i, torch.arange(p - 1, first - 1, device=device), i, torch.arange(p - 1, p + c - 1)))
            sources.append((i, torch.arange(first, first + r, device=device), j, torch.arange(p - 1, p + r - 1)))
        padding = ~mask.any(-1, keepdim=True).expand_as(mask) & torch.eye(packed_len, dtype=torch.bool, device=device)
        mask |= padding  # padded queries attend to themselves only (a fully masked row would be NaN)

        forward = {k: v for k, v in kwargs.items() if k not in ("mm_token_type_ids", "image_grid_thw")}
        if grid is not None:
            forward["image_grid_thw"] = grid[:pairs]
        if pixels is not None:  # keep the first half's images (TRL repeats them for rejected)
            images = int(grid[:pairs].prod(-1).sum()) if grid is not None else pairs
            forward["pixel_values"] = pixels[:images]
        for key in PER_ROW_IMAGE_INPUTS:  # Idefics3's pixel mask, LLaVA-OneVision's anyres sizes: first half too
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and value.shape[0] == rows:
                forward[key] = value[:pairs]
        if packed_types is not None:
            forward["mm_token_type_ids"] = packed_types
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos if pos.shape[0] > 1 else pos[0],
                         labels=packed_labels, **forward)  # fmt: skip

        fused_log_probs(out)  # TRL reads log_probs: a model output without them is a changed internal
        unpacked = {}
        for name in PER_TOKEN_OUTPUTS:
            value = getattr(out, name, None)
            if value is None:
                continue
            target = torch.zeros((rows, length - 1), dtype=value.dtype, device=device)
            for pair, packed_index, row, index in sources:
                target[row, index.to(device)] = value[pair, packed_index]
            unpacked[name] = target
        return SimpleNamespace(**unpacked, aux_loss=getattr(out, "aux_loss", None))
