"""Tiny random models of today's VLM families: Qwen3-VL, Gemma 3, Idefics3 / SmolVLM, LLaVA-OneVision, InternVL.

Each builder returns ``(processor, config)``: the family's real processor class (its image processor sized so that an
image costs about 64 image tokens, its special tokens and a chat template with the real model's turn format) and a
config of the real architecture with a 2-layer vision tower and the shared 2-layer decoder of
:func:`vlfeedback_kit.training.tiny_model._text_dims`. :func:`vlfeedback_kit.training.tiny_model.build_tiny_model`
instantiates, seeds and saves them; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKENS = 64
"""Image tokens per image in every tiny family (before LLaVA-OneVision's anyres crops, which add some)."""

QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""``Qwen/Qwen3-VL-8B-Instruct``'s turn format (no default system prompt), without its tool-calling branches."""

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""``google/gemma-3-4b-it``'s turn format: ``<start_of_turn>user … <end_of_turn>``, the assistant is ``model``."""

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""``HuggingFaceTB/SmolVLM-Instruct``'s chat template (``User:<image>… <end_of_utterance>``)."""

ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
"""``llava-hf/llava-onevision-qwen2-7b-ov-hf``'s turn format: Qwen2 ChatML, images first."""

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""``OpenGVLab/InternVL3-1B-hf``'s chat template without its default system prompt."""

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _tokenizer(special: tuple[str, ...], **kwargs: Any):
    """A left-padding ``TokenizersBackend`` over the kit's trained byte-level BPE with ``special`` tokens."""
    from transformers import TokenizersBackend

    from vlfeedback_kit.training.tiny_model import _train_tokenizer

    return TokenizersBackend(tokenizer_object=_train_tokenizer(special), padding_side="left", **kwargs)


def _vision_dims(**extra: Any) -> dict:
    """A 2-layer, 64-wide vision tower."""
    return {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, **extra}


def qwen3_vl() -> tuple[Any, Any]:
    """Qwen3-VL: 16 px patches merged 2 x 2 (32 px per image token), DeepStack features from vision layer 1."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from vlfeedback_kit.training.tiny_model import QWEN_SPECIAL_TOKENS, _text_dims, qwen_token_ids

    tokenizer = _tokenizer(
        QWEN_SPECIAL_TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    merged = 32
    pixels = {"min_pixels": 16 * merged**2, "max_pixels": IMAGE_TOKENS * merged**2}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, **pixels),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, size={
            "shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )  # fmt: skip
    text = {
        **_text_dims(tokenizer),
        "head_dim": 16,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [2, 3, 3],
                            "mrope_interleaved": True},
    }  # fmt: skip
    vision = {
        "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64, "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }  # fmt: skip
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    return processor, config


def gemma3() -> tuple[Any, Any]:
    """Gemma 3: a SigLIP tower on 128 px images (16 x 16 patches), average-pooled 2 x 2 to 64 soft tokens."""
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor, SiglipVisionConfig

    from vlfeedback_kit.training.tiny_model import _text_dims

    special = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>")  # fmt: skip
    tokenizer = _tokenizer(
        special,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    image_processor = Gemma3ImageProcessor(size={"height": 128, "width": 128}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=IMAGE_TOKENS,
    )
    text = {
        **_text_dims(tokenizer),
        "head_dim": 16,
        "sliding_window": 64,
        "layer_types": ["sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 16,
    }
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**_vision_dims(image_size=128, patch_size=8)),
        mm_tokens_per_image=IMAGE_TOKENS,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    return processor, config


def idefics3() -> tuple[Any, Any]:
    """Idefics3 (the architecture of SmolVLM-Instruct): a SigLIP tower on 128 px images, pixel-shuffled 2 x 2 to 64
    tokens, no image splitting. (SmolVLM2's own processor needs ``num2words``, which the kit does not install.)"""
    from transformers import (
        Idefics3Config,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    from vlfeedback_kit.training.tiny_model import _text_dims

    special = ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
               "<image>")  # fmt: skip
    tokenizer = _tokenizer(
        special,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
    size = {"longest_edge": 128}
    image_processor = Idefics3ImageProcessor(size=size, max_image_size=size, do_image_splitting=False)
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_TOKENS,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        text_config=LlamaConfig(**_text_dims(tokenizer)).to_dict(),
        vision_config=Idefics3VisionConfig(**_vision_dims(image_size=128, patch_size=8)).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    return processor, config


def llava_onevision() -> tuple[Any, Any]:
    """LLaVA-OneVision: a SigLIP tower on 64 px tiles (8 x 8 patches), anyres with a single 64 px pinpoint."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from vlfeedback_kit.training.tiny_model import _text_dims

    tokenizer = _tokenizer(
        (*CHATML_TOKENS, "<image>", "<video>"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    pinpoints = [[64, 64]]  # one anyres crop beside the base tile
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 64, "width": 64}),
        num_image_tokens=IMAGE_TOKENS,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_vision_dims(image_size=64, patch_size=8)).to_dict(),
        text_config=Qwen2Config(**_text_dims(tokenizer)).to_dict(),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        dtype="float32",
    )
    return processor, config


def internvl() -> tuple[Any, Any]:
    """InternVL 3: an InternViT tower on 128 px tiles (16 x 16 patches), pixel-unshuffled 0.5x to 64 tokens, one
    tile per image (dynamic tiling capped at ``max_patches=1``)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    from vlfeedback_kit.training.tiny_model import _text_dims

    tokenizer = _tokenizer(
        (*CHATML_TOKENS, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    size = {"height": 128, "width": 128}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, max_patches=1),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=IMAGE_TOKENS,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    vision = InternVLVisionConfig(**_vision_dims(image_size=[128, 128], patch_size=[8, 8]))
    config = InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=Qwen2Config(**_text_dims(tokenizer)).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=IMAGE_TOKENS,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        dtype="float32",
    )
    return processor, config


BUILDERS = {
    "qwen3_vl": qwen3_vl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "llava_onevision": llava_onevision,
    "internvl": internvl,
}
"""Family name -> builder of ``(processor, config)``."""
