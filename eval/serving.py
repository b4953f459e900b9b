"""Answering image + question prompts with a base VLM and, optionally, its Silkie adapter — one model in memory.

Silkie is the base with its LoRA adapter on; the base is the same model with it off. PEFT's ``adapter_names``
(one name per row, ``"__base__"`` for no adapter) lets a single batched ``generate`` answer both, which is what
``vlfeedback eval run --compare-base`` and the Silkie-vs-base Space do: one model load, one forward per step for
both sides. Unlike ``disable_adapter()``, it changes no shared state, so concurrent requests are safe.

    served = load("runs/tiny-qwen2-vl", adapter="runs/silkie-tiny")
    base_answer, silkie_answer = generate(served, [(image, "What is shown?")] * 2, [BASE, SILKIE])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlfeedback_kit.errors import UserError, hub_error, is_hub_error
from vlfeedback_kit.hub_ids import folder_or_hub_problem

BASE = "__base__"
"""PEFT's adapter name for "no adapter" in ``adapter_names``."""

SILKIE = "default"
"""The adapter name a loaded Silkie adapter gets."""


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, recorded with every response (greedy by default, as the benchmarks' official runs)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature > 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                    "top_p": self.top_p}  # fmt: skip
        return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                "top_k": None}  # fmt: skip


@dataclass
class ServedModel:
    """A loaded base model (and adapter), with what identifies them in every output file."""

    model: Any
    processor: Any
    model_id: str
    model_revision: str | None
    adapter_id: str | None
    adapter_revision: str | None
    vision_adapter_weight: str | None = None
    """A weight the adapter holds in the vision tower or projector, if any: its rows cannot be mixed with the
    base's (PEFT switches adapters per row in language layers only), and Silkie's image features differ."""

    @property
    def has_adapter(self) -> bool:
        return self.adapter_id is not None

    def provenance(self) -> dict:
        return {"model": self.model_id, "model_revision": self.model_revision, "adapter": self.adapter_id,
                "adapter_revision": self.adapter_revision}  # fmt: skip


def base_of_run(adapter: str | Path) -> str | None:
    """The base model a run dir's adapter was trained from (``run_info.json``, else ``adapter_config.json``)."""
    folder = Path(adapter)
    for name, key in (("run_info.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, dict):
                value = value.get("path") or value.get("id")
            if value:
                return str(value)
    return None


def adapter_base(adapter: str, revision: str | None = None, flag: str = "--adapter") -> str | None:
    """Check that ``adapter`` is a PEFT adapter — a run dir of ``vlfeedback train`` (its adapter sits at the top,
    beside ``run_info.json``), an adapter folder, or a Hub id — and return the base model it names (None if none).
    Anything else is a one-line UserError naming the folder, before a base model is loaded for nothing."""
    folder = Path(adapter).expanduser()
    if folder.is_dir():
        if (folder / "adapter_config.json").is_file():
            return base_of_run(folder)
        if (folder / "config.json").is_file():
            raise UserError(f"{flag} {adapter} holds full model weights, not a LoRA adapter: pass it as --model")
        checkpoints = [p.parent for p in folder.glob("checkpoint-*/adapter_config.json")]
        last = max(checkpoints, key=lambda p: int(p.name.rpartition("-")[2] or 0), default=None)
        unfinished = f"; its run has not finished: pass a checkpoint such as {last}" if last else ""
        raise UserError(
            f"{flag} {adapter} is a folder without adapter_config.json (not a run dir of `vlfeedback train` or a PEFT "
            f"adapter){unfinished}"
        )
    problem = folder_or_hub_problem(adapter, flag)
    if problem:
        raise UserError(problem)
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(adapter, "adapter_config.json", revision=revision)
    except Exception as err:
        if not is_hub_error(err):
            raise
        action = f"{flag} {adapter}: no folder {adapter} here, and no adapter {adapter} could be read from the Hub"
        raise hub_error(action, err) from err
    return json.loads(Path(config).read_text()).get("base_model_name_or_path")


def load(model: str | None, adapter: str | None = None, model_revision: str | None = None,
         adapter_revision: str | None = None, dtype: str = "auto", device: str | None = None) -> ServedModel:
    """Load a base VLM (``AutoModelForImageTextToText``) and, when given, its PEFT adapter as ``"default"``.

    ``adapter`` is a run dir, an adapter folder or a Hub id, checked first (:func:`adapter_base`); ``model`` may be
    omitted when the adapter names its base. The processor comes from the adapter's folder when the run saved one
    there (its chat template is the trained one), else the base's."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = adapter_base(adapter, adapter_revision) if adapter else None
    model = model or base
    if not model:
        raise UserError(
            f"--adapter {adapter} names no base model (no run_info.json or base_model_name_or_path): pass --model"
            if adapter
            else "no base model: pass --model, or an --adapter run dir whose run_info.json names its base"
        )
    processor_source, processor_revision = model, model_revision
    if adapter and Path(adapter, "preprocessor_config.json").is_file():
        processor_source, processor_revision = adapter, None
    processor = AutoProcessor.from_pretrained(processor_source, revision=processor_revision)
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    network = AutoModelForImageTextToText.from_pretrained(model, revision=model_revision, dtype=dtype)
    if adapter:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter, revision=adapter_revision, adapter_name=SILKIE)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    network.to(device).eval()
    return ServedModel(network, processor, model, model_revision, adapter, adapter_revision,
                       _vision_adapter_weight(network) if adapter else None)


def _vision_adapter_weight(model: Any) -> str | None:
    from vlfeedback_kit.training.freeze import is_vision_parameter

    return next((n for n, _ in model.named_parameters() if f".{SILKIE}" in n and is_vision_parameter(n)), None)


def refuse_mixed_rows(served: ServedModel) -> None:
    """A one-line error when the adapter cannot be switched per row (its weights reach the vision tower)."""
    if served.vision_adapter_weight:
        raise ValueError(
            f"{served.adapter_id} has LoRA weights in the vision tower ({served.vision_adapter_weight}): PEFT cannot "
            "switch it on and off per row, which base rows and --compare-base need; evaluate Silkie and the base in "
            "two runs (the base with --model only), or merge the adapter (PeftModel.merge_and_unload) first"
        )


def chat_inputs(processor: Any, prompts: Sequence[tuple[Any, str]]) -> Any:
    """The processor's batch (left-padded) for ``(image, question)`` prompts in the model's own chat template."""
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        for _, question in prompts
    ]
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    images = [[image] for image, _ in prompts]  # one list per prompt: processors that count images per sample need it
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def generate(served: ServedModel, prompts: Sequence[tuple[Any, str]], adapters: Sequence[str] | None = None,
             settings: GenerationSettings = GenerationSettings(), streamer: Any = None) -> list[str]:
    """Answer every prompt in one batched ``generate``; ``adapters`` names each row's adapter (:data:`SILKIE` or
    :data:`BASE`; default: Silkie when an adapter is loaded)."""
    if adapters is not None and len(adapters) != len(prompts):
        raise ValueError(f"{len(adapters)} adapter names for {len(prompts)} prompts")
    if adapters is not None and not served.has_adapter and any(name != BASE for name in adapters):
        raise ValueError("adapter rows asked of a model loaded without an adapter")
    inputs = chat_inputs(served.processor, prompts)
    if not served.has_adapter or adapters is None or set(adapters) == {SILKIE}:
        return generate_from_inputs(served, inputs, None, settings, streamer)  # the adapter is on for every row
    refuse_mixed_rows(served)
    return generate_from_inputs(served, inputs, list(adapters), settings, streamer)


def generate_both(served: ServedModel, prompts: Sequence[tuple[Any, str]],
                  settings: GenerationSettings = GenerationSettings()) -> tuple[list[str], list[str]]:
    """Silkie's and the base's answers to every prompt from one batched pass (adapter on / off per row).

    The rows are the prompts twice (Silkie's half, then the base's). The adapter leaves the vision tower and
    projector alone (LoRA on the language model, as every kit recipe trains; an adapter with vision weights is
    refused, as PEFT cannot mix it per row), so both halves see the same image features: the processor prepares
    each image once and the vision tower encodes it once, handed to ``generate`` as ``mm_encoder_outputs`` (the
    sharing DPO training does for chosen and rejected)."""
    if not served.has_adapter:
        raise ValueError("comparing with the base needs an adapter")
    inputs, extra = twice_over(served, prompts)
    adapters = [SILKIE] * len(prompts) + [BASE] * len(prompts)
    return _split(generate_from_inputs(served, inputs, adapters, settings, **extra))


def twice_over(served: ServedModel, prompts: Sequence[tuple[Any, str]]) -> tuple[Any, dict]:
    """Generate inputs for the prompts twice over (all of them, then all again) with each image prepared and
    encoded once, and the extra ``generate`` keyword (``mm_encoder_outputs``) carrying the shared features; rows
    may then take any adapter each."""
    import torch

    from vlfeedback_kit.training.shared_images import PER_IMAGE_KEYS, encoded_twice_over, repeat_rows

    refuse_mixed_rows(served)
    if not shares_image_features(served.model):
        return chat_inputs(served.processor, [*prompts, *prompts]), {}
    once = chat_inputs(served.processor, prompts).to(served.model.device)
    with torch.inference_mode():
        encoded = encoded_twice_over(served.model, once)
    inputs = repeat_rows(once)
    for key in PER_IMAGE_KEYS & set(inputs.keys()):
        del inputs[key]
    return inputs, {"mm_encoder_outputs": encoded}


def _split(answers: list[str]) -> tuple[list[str], list[str]]:
    half = len(answers) // 2
    return answers[:half], answers[half:]


def shares_image_features(model: Any) -> bool:
    """Whether the inner model accepts precomputed image features (``mm_encoder_outputs``, transformers >= 5.17)."""
    from vlfeedback_kit.training.shared_images import inner_vlm

    try:
        inner_vlm(model)
    except ValueError:
        return False
    return True


def generate_from_inputs(served: ServedModel, inputs: Any, adapters: list[str] | None,
                         settings: GenerationSettings, streamer: Any = None, **extra: Any) -> list[str]:
    """One seeded, gradient-free ``generate`` on a processor batch (``adapters``: PEFT's per-row names, or None for
    the loaded adapter on every row); ``extra`` goes to ``generate`` as is. Returns the decoded new text per row."""
    import torch

    inputs = inputs.to(served.model.device)
    kwargs = settings.generate_kwargs() | extra
    if adapters is not None:
        kwargs["adapter_names"] = adapters
    if settings.temperature > 0:
        torch.manual_seed(settings.seed)
    with torch.inference_mode():
        output = served.model.generate(**inputs, **kwargs, streamer=streamer,
                                       pad_token_id=served.processor.tokenizer.pad_token_id)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in served.processor.batch_decode(new_tokens, skip_special_tokens=True)]
