"""Run a local VLM: a base model (and its PEFT adapters) loaded once, answering image + question prompts in batches.

The kit's one local generation path — decode's ``transformers`` pool members, ``vlfeedback eval run``, the
Silkie-vs-base Space and the benchmarks all call it:

- :func:`load`: a base ``AutoModelForImageTextToText`` at a revision, dtype and device, with optional adapters
  (the first is :data:`SILKIE`, the one Silkie rows use);
- :func:`generate`: one answer per prompt in one batched ``generate``; greedy, or sampled with a seed per item: a
  sampled answer depends on its seed and its prompt only, never on the rest of the batch;
- :func:`sample`: ``n`` answers per prompt from one processor call and one vision encode per image;
- :func:`generate_both`: Silkie's and the base's answers in one batch (PEFT ``adapter_names``: one name per row,
  :data:`BASE` for no adapter), what ``eval run --compare-base`` and the Space do. Unlike ``disable_adapter()`` it
  changes no shared state, so concurrent requests are safe.

It imports nothing from ``training``, ``builders`` or ``eval`` (the Space installs no TRL), and torch /
transformers / PEFT only inside functions.

    served = load("runs/tiny-qwen2-vl", adapter="runs/silkie-tiny")
    silkie_answers, base_answers = generate_both(served, [(image, "What is shown?")])
    four_each = sample(served, [(image, "What is shown?")], 4, GenerationSettings(temperature=0.7), seeds=[1])
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlfeedback_kit.errors import UserError, hub_error, is_hub_error
from vlfeedback_kit.hub_ids import folder_or_hub_problem

BASE = "__base__"
"""PEFT's adapter name for "no adapter" in ``adapter_names``."""

SILKIE = "default"
"""The adapter name a loaded Silkie adapter gets."""

PER_IMAGE_KEYS = frozenset({"pixel_values", "pixel_attention_mask", "image_sizes", "batch_num_images"})
"""Processor outputs only the vision encoder reads (pixels, Idefics3's pixel mask, LLaVA-OneVision's anyres sizes):
left out of the generate inputs when the features are handed over encoded. The rest (token ids, Qwen's
``image_grid_thw`` that M-RoPE needs) is repeated per row."""
ENCODER_KEYS = PER_IMAGE_KEYS | {"image_grid_thw"}
"""Inputs handed to ``get_image_features`` when its signature takes them."""
NOT_FOR_THE_LANGUAGE_MODEL = ("last_hidden_state", "hidden_states", "attentions")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, recorded with every response (greedy by default, as the benchmarks' official runs).

    With ``temperature > 0`` each row samples from the temperature-scaled nucleus (``top_p``) with its own seed
    (``seed`` unless the call names one per prompt)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """``generate``'s keywords: always its greedy search, as sampling is the per-row seeded noise that
        :func:`generate_from_inputs` adds (HF's own sampling draws every row from one shared generator)."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                "top_k": None}  # fmt: skip


@dataclass
class ServedModel:
    """A loaded base model (and adapters), with what identifies them in every output file."""

    model: Any
    processor: Any
    model_id: str
    model_revision: str | None
    adapter_id: str | None
    adapter_revision: str | None
    vision_adapter_weight: str | None = None
    """A weight an adapter holds in the vision tower or projector, if any: its rows cannot be mixed with the
    base's (PEFT switches adapters per row in language layers only), and Silkie's image features differ."""
    adapters: tuple[str, ...] = ()
    """The loaded adapter names (:data:`SILKIE` first), what a row may name besides :data:`BASE`."""

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
         adapter_revision: str | None = None, dtype: str = "auto", device: str | None = None,
         more_adapters: Mapping[str, str] | None = None) -> ServedModel:
    """Load a base VLM (``AutoModelForImageTextToText``) and, when given, its PEFT adapter as :data:`SILKIE`
    (``more_adapters``: further ``{name: adapter}`` a row may name).

    ``adapter`` is a run dir, an adapter folder or a Hub id, checked first (:func:`adapter_base`); ``model`` may be
    omitted when the adapter names its base. The processor comes from the adapter's folder when the run saved one
    there (its chat template is the trained one), else the base's. ``device``: default CUDA when available."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = adapter_base(adapter, adapter_revision) if adapter else None
    for name, extra in (more_adapters or {}).items():
        adapter_base(extra, flag=f"adapter {name!r}")
    model = model or base
    if not model:
        raise UserError(
            f"--adapter {adapter} names no base model (no run_info.json or base_model_name_or_path): pass --model"
            if adapter
            else "no base model: pass --model, or an --adapter run dir whose run_info.json names its base"
        )
    if more_adapters and not adapter:
        raise ValueError("more_adapters need a first adapter (the Silkie one)")
    processor_source, processor_revision = model, model_revision
    if adapter and Path(adapter, "preprocessor_config.json").is_file():
        processor_source, processor_revision = adapter, None
    processor = AutoProcessor.from_pretrained(processor_source, revision=processor_revision)
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    network = AutoModelForImageTextToText.from_pretrained(model, revision=model_revision, dtype=dtype)
    names: tuple[str, ...] = ()
    if adapter:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter, revision=adapter_revision, adapter_name=SILKIE)
        for name, extra in (more_adapters or {}).items():
            network.load_adapter(extra, adapter_name=name)
        names = (SILKIE, *(more_adapters or {}))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    network.to(device).eval()
    return ServedModel(network, processor, model, model_revision, adapter, adapter_revision,
                       vision_adapter_weight(network, names), names)  # fmt: skip


def vision_adapter_weight(model: Any, adapters: Sequence[str]) -> str | None:
    """The first adapter weight outside the language model (its decoder and output head), i.e. in the vision tower
    or projector, or None."""
    if not adapters:
        return None
    language = {id(p) for part in (model.get_decoder(), model.get_output_embeddings()) if part is not None
                for p in part.parameters()}  # fmt: skip
    marks = tuple(f".{name}." for name in adapters)
    return next((n for n, p in model.named_parameters() if any(m in n for m in marks) and id(p) not in language), None)


def refuse_mixed_rows(served: ServedModel) -> None:
    """A one-line error when the adapter cannot be switched per row (its weights reach the vision tower)."""
    if served.vision_adapter_weight:
        raise ValueError(
            f"{served.adapter_id} has LoRA weights in the vision tower ({served.vision_adapter_weight}): PEFT cannot "
            "switch it on and off per row, which base rows and --compare-base need; evaluate Silkie and the base in "
            "two runs (the base with --model only), or merge the adapter (PeftModel.merge_and_unload) first"
        )


def row_routes(served: ServedModel, adapters: Sequence[str] | None) -> list[str] | None:
    """PEFT's ``adapter_names`` for rows naming ``adapters`` (None: the loaded adapter, if any, on every row),
    checked: each name loaded (or :data:`BASE`), and mixing only when the adapter leaves the vision tower alone."""
    if adapters is None:
        return None
    unknown = sorted(set(adapters) - {BASE, *served.adapters})
    if unknown:
        if not served.has_adapter:
            raise ValueError("adapter rows asked of a model loaded without an adapter")
        raise ValueError(f"adapter rows {unknown} name no loaded adapter ({list(served.adapters)})")
    if not served.has_adapter or set(adapters) == {served.adapters[0]} and len(served.adapters) == 1:
        return None  # the one loaded adapter is on for every row (or there is none)
    refuse_mixed_rows(served)
    return list(adapters)


def chat_inputs(processor: Any, prompts: Sequence[tuple[Any, str]]) -> Any:
    """The processor's batch (left-padded) for ``(image, question)`` prompts in the model's own chat template."""
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        for _, question in prompts
    ]
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    images = [[image] for image, _ in prompts]  # one list per prompt: processors that count images per sample need it
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def item_seed(seed: int, key: str) -> int:
    """A sampling seed for one item: a function of the run's seed and the item's own key (its id) only."""
    return int(hashlib.sha256(json.dumps([seed, key]).encode()).hexdigest()[:8], 16)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of a prompt's ``draw``-th sample (the 0th is ``seed`` itself, so ``n=1`` equals :func:`generate`)."""
    return seed if draw == 0 else item_seed(seed, f"draw {draw}")


def generate(served: ServedModel, prompts: Sequence[tuple[Any, str]], adapters: Sequence[str] | None = None,
             settings: GenerationSettings = GenerationSettings(), streamer: Any = None,
             seeds: Sequence[int] | None = None) -> list[str]:
    """Answer every prompt in one batched ``generate``; ``adapters`` names each row's adapter (:data:`SILKIE` or
    :data:`BASE`; default: Silkie when an adapter is loaded); ``seeds``: one per prompt when sampling (default:
    ``settings.seed`` for each)."""
    if adapters is not None and len(adapters) != len(prompts):
        raise ValueError(f"{len(adapters)} adapter names for {len(prompts)} prompts")
    return _blocks(served, prompts, [0], adapters, settings, seeds, streamer)


def sample(served: ServedModel, prompts: Sequence[tuple[Any, str]], n: int,
           settings: GenerationSettings = GenerationSettings(), seeds: Sequence[int] | None = None,
           adapters: Sequence[str] | None = None) -> list[list[str]]:
    """``n`` answers per prompt (``[prompt][draw]``) from one batched ``generate``: the processor prepares each
    prompt once and the vision tower encodes each image once, the features repeated for the ``n`` rows. Draw ``j``
    samples with :func:`draw_seed` of the prompt's seed, so the answers do not depend on the other prompts."""
    if n < 1:
        raise ValueError(f"n = {n} samples per prompt: need n >= 1")
    if adapters is not None and len(adapters) != len(prompts):
        raise ValueError(f"{len(adapters)} adapter names for {len(prompts)} prompts")
    rows = _blocks(served, prompts, list(range(n)), None if adapters is None else list(adapters) * n, settings,
                   seeds)  # fmt: skip
    return [rows[i::len(prompts)] for i in range(len(prompts))]


def generate_both(served: ServedModel, prompts: Sequence[tuple[Any, str]],
                  settings: GenerationSettings = GenerationSettings(),
                  seeds: Sequence[int] | None = None) -> tuple[list[str], list[str]]:
    """Silkie's and the base's answers to every prompt from one batched pass (adapter on / off per row).

    The rows are the prompts twice (Silkie's half, then the base's, each prompt with its own seed on both sides).
    The adapter leaves the vision tower and projector alone (LoRA on the language model, as every kit recipe
    trains; an adapter with vision weights is refused, as PEFT cannot mix it per row), so both halves see the same
    image features: each image is prepared and encoded once (:func:`repeated_inputs`)."""
    if not served.has_adapter:
        raise ValueError("comparing with the base needs an adapter")
    answers = _blocks(served, prompts, [0, 0], [SILKIE] * len(prompts) + [BASE] * len(prompts), settings, seeds)
    return answers[: len(prompts)], answers[len(prompts) :]


def _blocks(served: ServedModel, prompts: Sequence[tuple[Any, str]], draws: list[int],
            adapters: Sequence[str] | None, settings: GenerationSettings, seeds: Sequence[int] | None,
            streamer: Any = None) -> list[str]:
    """Answers for ``len(draws)`` blocks of rows, each block every prompt once (block ``b`` samples draw
    ``draws[b]``), from one processor call, one vision encode per image and one ``generate``."""
    seeds = [settings.seed] * len(prompts) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    routes = row_routes(served, adapters)  # checked before any work
    inputs, extra = repeated_inputs(served, prompts, len(draws))
    row_seeds = [draw_seed(seed, draw) for draw in draws for seed in seeds]
    return generate_from_inputs(served, inputs, routes, settings, streamer, seeds=row_seeds, **extra)


def repeated_inputs(served: ServedModel, prompts: Sequence[tuple[Any, str]], times: int) -> tuple[Any, dict]:
    """Generate inputs for the prompts ``times`` over (all of them, then all again, …) with each prompt prepared and
    each image encoded once, and the extra ``generate`` keyword (``mm_encoder_outputs``) carrying the repeated
    features (none when ``times`` is 1, or the model takes no precomputed features: then the processor repeats)."""
    import torch

    if times == 1:
        return chat_inputs(served.processor, prompts), {}
    if not shares_image_features(served.model):
        return chat_inputs(served.processor, list(prompts) * times), {}
    once = chat_inputs(served.processor, prompts).to(served.model.device)
    with torch.inference_mode():
        features = image_features(inner_vlm(served.model), once)
    encoded = type(features)(**{k: repeat_features(v, times) for k, v in features.items()
                                if k not in NOT_FOR_THE_LANGUAGE_MODEL})  # fmt: skip
    for key in list(once.keys()):
        if key in PER_IMAGE_KEYS:
            del once[key]
        elif isinstance(once[key], torch.Tensor):
            once[key] = torch.cat([once[key]] * times, dim=0)
    return once, {"mm_encoder_outputs": {"image": encoded}}


def repeat_features(value: Any, times: int) -> Any:
    """Encoder outputs for ``times`` blocks of rows: per-image tensors, or sequences of them, repeated (Qwen3-VL's
    DeepStack features, a list per layer of per-image tensors, layer by layer)."""
    import torch

    if isinstance(value, torch.Tensor):
        return torch.cat([value] * times, dim=0)
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, torch.Tensor) for item in value):
            return type(value)(list(value) * times)
        return type(value)(repeat_features(item, times) for item in value)
    return value


def find_inner_vlm(model: Any) -> Any | None:
    """The module that owns ``get_image_features`` and accepts ``mm_encoder_outputs`` (e.g. ``Qwen2VLModel``), or
    None where the model has none (the one search; training's compat layer raises its own error on None)."""
    for module in model.modules():
        is_inner = hasattr(module, "get_image_features") and not hasattr(module, "lm_head")
        if is_inner and "mm_encoder_outputs" in inspect.signature(module.forward).parameters:
            return module
    return None


def inner_vlm(model: Any) -> Any:
    """:func:`find_inner_vlm`, failing with the way out when the model has no such module."""
    inner = find_inner_vlm(model)
    if inner is None:
        raise ValueError(
            f"{type(model).__name__} has no inner model accepting `mm_encoder_outputs` (transformers >= 5.17 VLMs "
            "do); set `share_image_features=False`"
        )
    return inner


def shares_image_features(model: Any) -> bool:
    """Whether the inner model accepts precomputed image features (``mm_encoder_outputs``, transformers >= 5.17)."""
    try:
        inner_vlm(model)
    except ValueError:
        return False
    return True


def image_features(inner: Any, inputs: Any, grid: Any = None) -> Any:
    """``get_image_features`` of the inner VLM on the inputs its signature takes, the config's feature-layer choices
    included (``grid``: the ``image_grid_thw`` to use instead of the inputs' own)."""
    parameters = inspect.signature(inner.get_image_features).parameters
    call = {k: v for k, v in inputs.items() if k in ENCODER_KEYS and k in parameters and v is not None}
    if grid is not None:
        call["image_grid_thw"] = grid
    for name in ("vision_feature_layer", "vision_feature_select_strategy"):
        if name in parameters and inputs.get(name) is None:
            call[name] = getattr(inner.config, name, None)
    return inner.get_image_features(**call, return_dict=True)


def seeded_sampling(seeds: Sequence[int], settings: GenerationSettings, device: Any) -> Any:
    """Logits processors that turn greedy search into sampling with a generator per row: temperature, top-p, then
    Gumbel noise (``-log`` of an Exp(1) draw) from the row's own seed, whose argmax is a sample of the warped
    distribution. A row's tokens thus depend on its seed and its own logits only, not on which rows share the
    batch (HF's ``do_sample`` draws every row from one global generator)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    class RowNoise(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            draws = [torch.empty(scores.shape[-1], device=scores.device, dtype=torch.float32).exponential_(generator=g)
                     for g in self.generators]  # fmt: skip
            return scores - torch.stack(draws).log().to(scores.dtype)

    processors = [TemperatureLogitsWarper(settings.temperature)]
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    return LogitsProcessorList([*processors, RowNoise()])


def generate_from_inputs(served: ServedModel, inputs: Any, adapters: list[str] | None,
                         settings: GenerationSettings, streamer: Any = None, seeds: Sequence[int] | None = None,
                         **extra: Any) -> list[str]:
    """One gradient-free ``generate`` on a processor batch (``adapters``: PEFT's per-row names, or None for the
    loaded adapter on every row; ``seeds``: one per row when sampling, default ``settings.seed``); ``extra`` goes to
    ``generate`` as is. Returns the decoded new text per row."""
    import torch

    inputs = inputs.to(served.model.device)
    rows = inputs["input_ids"].shape[0]
    kwargs = settings.generate_kwargs() | extra
    if adapters is not None:
        if len(set(adapters)) > 1:
            refuse_mixed_rows(served)
        kwargs["adapter_names"] = adapters
    if settings.temperature > 0:
        seeds = [settings.seed] * rows if seeds is None else list(seeds)
        if len(seeds) != rows:
            raise ValueError(f"{len(seeds)} seeds for {rows} rows")
        kwargs["logits_processor"] = seeded_sampling(seeds, settings, served.model.device)
    with torch.inference_mode():
        output = served.model.generate(**inputs, **kwargs, streamer=streamer,
                                       pad_token_id=served.processor.tokenizer.pad_token_id)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in served.processor.batch_decode(new_tokens, skip_special_tokens=True)]
