"""A tiny, randomly initialised vision-language model of a real family, built offline in seconds.

The kit's training, evaluation and demo code is exercised end to end (CPU tests, smoke runs) against these models
instead of multi-gigabyte checkpoints from the Hub:

    vlfeedback tiny-model --family qwen2_vl --out runs/tiny-qwen2-vl

Each model is the family's real architecture (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, ``LlavaForConditionalGeneration``, and Qwen3-VL, Gemma 3, Idefics3 (SmolVLM),
LLaVA-OneVision and InternVL from :mod:`vlfeedback_kit.training.tiny_families`) with tiny dimensions, a byte-level BPE
tokenizer trained in-process on a built-in English corpus, the family's special tokens and chat template, and an
image processor sized so that an image costs at most 64 image tokens (LLaVA-OneVision: 64 plus one anyres crop, at
most 136). Everything is written with ``save_pretrained`` so that ``AutoProcessor`` /
``AutoModelForImageTextToText`` load it from the folder with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

FAMILIES: tuple[str, ...] = (
    "qwen2_vl",
    "qwen2_5_vl",
    "llava",
    "qwen3_vl",
    "gemma3",
    "idefics3",
    "llava_onevision",
    "internvl",
)

VOCAB_SIZE = 1024
"""Most tokens the trained tokenizer may hold, special tokens included (the corpus yields fewer)."""

QWEN_MERGED_PATCH = 28
"""Pixels per side of one Qwen image token: patch 14, spatially merged 2 × 2."""

QWEN_MIN_TOKENS, QWEN_MAX_TOKENS = 16, 64
"""Qwen images are resized to between 16 and 64 image tokens (a 224 px or larger square gives 64)."""

LLAVA_IMAGE_SIZE, LLAVA_PATCH_SIZE = 64, 8
"""LLaVA images are resized and cropped to 64 px; 8 px patches give 8 × 8 = 64 image tokens (CLS dropped)."""

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<image>", "<pad>")

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template of ``Qwen/Qwen2-VL-7B-Instruct`` (Qwen2.5-VL ships the same one)."""

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""The chat template of ``llava-hf/llava-1.5-7b-hf``: images first, then text, ``USER: … ASSISTANT:``."""

_COLOURS = "red orange yellow green blue purple pink brown black white gray gold silver"
_SHAPES = "circle square triangle rectangle star line dot oval heart arrow"
_OBJECTS = (
    "image picture photo person man woman child dog cat bird horse car bus truck bike boat train plane table chair "
    "bed sofa cup bottle plate pizza cake apple banana tree cloud road street building house window door sign chart "
    "graph number letter word shirt hat ball phone screen book"
)
_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen twenty hundred "
    "first second third last"
)
_QUESTIONS = (
    "How many {s}s are there in the image?",
    "What color is the {o}?",
    "Is there a {c} {s} in the picture?",
    "What shape is the {c} object?",
    "Where is the {o} located in the image?",
    "Describe the image in detail.",
    "What is the {o} doing?",
    "Which object is on the left of the {o}?",
    "Can you see a {o} in this photo?",
    "What does the text in the image say?",
)
_ANSWERS = (
    "There are {n} {c} {s}s in the image.",
    "Yes, there is a {c} {s} next to the {o}.",
    "No, there is no {o} in the picture.",
    "The {o} is {c} and it is on the right side of the image.",
    "The image shows a {c} {o} near a {s}. The answer is {n}.",
    "I am not sure, but it looks like a {c} {s} above the {o}.",
    "Yes.",
    "No.",
    "It is {c}.",
    "The answer is {d}.",
)


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build, randomly initialise and save a tiny model of ``family`` with its processor; same seed, same files."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    import torch
    from transformers import GenerationConfig

    from vlfeedback_kit.training.tiny_families import BUILDERS, IMAGE_TOKENS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family in BUILDERS:
        processor, config = BUILDERS[family]()
    else:
        processor = _llava_processor() if family == "llava" else _qwen_processor(family)
        config = _llava_config(processor.tokenizer) if family == "llava" else _qwen_config(family, processor.tokenizer)
    model_class = _model_class(family)
    torch.manual_seed(seed)
    model = model_class(config)
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    metadata = {
        "family": family,
        "seed": seed,
        "architecture": model_class.__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "max_image_tokens": IMAGE_TOKENS,
    }
    (out / "tiny_model.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def corpus() -> list[str]:
    """The built-in English training text: VQA-style questions and answers about colours, shapes and counts."""
    colours, shapes, objects, numbers = (words.split() for words in (_COLOURS, _SHAPES, _OBJECTS, _NUMBERS))
    lines = []
    for i, (colour, shape, obj) in enumerate(itertools.product(colours, shapes, objects)):
        fields = {"c": colour, "s": shape, "o": obj, "n": numbers[i % len(numbers)], "d": i % 101}
        question, answer = _QUESTIONS[i % len(_QUESTIONS)], _ANSWERS[i // len(_QUESTIONS) % len(_ANSWERS)]
        lines.append(f"{question} {answer}".format(**fields))
    lines.append(" ".join([_COLOURS, _SHAPES, _OBJECTS, _NUMBERS, "yes no left right top bottom middle"]))
    lines.append(" ".join(map(str, range(101))))
    return lines


def _train_tokenizer(special_tokens: tuple[str, ...]):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on :func:`corpus`, special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def _qwen_processor(family: str):
    """A Qwen2-VL / Qwen2.5-VL processor: trained tokenizer, small-pixel image processor, Qwen chat template."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        TokenizersBackend,
    )

    tokenizer = TokenizersBackend(
        tokenizer_object=_train_tokenizer(QWEN_SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",
    )
    pixels = {
        "min_pixels": QWEN_MIN_TOKENS * QWEN_MERGED_PATCH**2,
        "max_pixels": QWEN_MAX_TOKENS * QWEN_MERGED_PATCH**2,
    }
    processor_class = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _llava_processor():
    """A LLaVA-1.5 processor: trained tokenizer with BOS, 64 px CLIP image processor, LLaVA chat template."""
    from tokenizers import processors
    from transformers import CLIPImageProcessor, LlavaProcessor, TokenizersBackend

    trained = _train_tokenizer(LLAVA_SPECIAL_TOKENS)
    trained.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", trained.token_to_id("<s>"))]
    )
    tokenizer = TokenizersBackend(
        tokenizer_object=trained,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE_SIZE}, crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def _text_dims(tokenizer) -> dict:
    """Decoder dimensions shared by every family: hidden 64, 2 layers, 4 heads (2 KV heads)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen_config(family: str, tokenizer):
    """A Qwen2-VL / Qwen2.5-VL config whose vision tower has depth 2 and the real patch, merge and temporal sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text_config = {
        **_text_dims(tokenizer),
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
    }
    vision_common = {"depth": 2, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2_vl":
        config_class = Qwen2VLConfig
        vision_config = {**vision_common, "embed_dim": 64, "hidden_size": 64, "mlp_ratio": 2}
    else:
        config_class = Qwen2_5_VLConfig
        vision_config = {
            **vision_common,
            "hidden_size": 64,
            "intermediate_size": 128,
            "out_hidden_size": 64,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        }
    return config_class(text_config=text_config, vision_config=vision_config, **qwen_token_ids(tokenizer))


def qwen_token_ids(tokenizer) -> dict:
    """The image/video token ids every Qwen-VL config names (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), and fp32."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "dtype": "float32",
    }


def _llava_config(tokenizer):
    """A LLaVA-1.5 config: a 2-layer CLIP vision tower on 64 px images and a 2-layer Llama decoder."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=LLAVA_IMAGE_SIZE,
        patch_size=LLAVA_PATCH_SIZE,
        projection_dim=64,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**_text_dims(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(LLAVA_IMAGE_SIZE // LLAVA_PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _model_class(family: str):
    """The ``…ForConditionalGeneration`` class of a family."""
    import transformers

    names = {
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "llava": "LlavaForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "gemma3": "Gemma3ForConditionalGeneration",
        "idefics3": "Idefics3ForConditionalGeneration",
        "llava_onevision": "LlavaOnevisionForConditionalGeneration",
        "internvl": "InternVLForConditionalGeneration",
    }
    return getattr(transformers, names[family])
