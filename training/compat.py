"""Every TRL / transformers / PEFT / accelerate / torch internal the kit's training relies on, in one place.

The kit's speedups hook into places these libraries do not promise to keep: TRL's ``_compute_loss`` and its
``precompute_ref_logps`` switch (the reference cache), the vision collator's ``processor`` and its repeated halves
(image sharing), a config's ``_attn_implementation`` and Qwen's ``get_rope_index`` (prompt-prefix sharing), PEFT's
per-layer ``lora_dropout`` / ``r`` and accelerate's ``native_amp`` (LoRA input sharing), the checkpointing layer's
``_gradient_checkpointing_func`` (``full_checkpoint_layers``), transformers' column filtering (pair keys). Each
accessor below says the version it was checked against (:data:`CHECKED`); where an internal is missing or changed it
raises a one-line :class:`CompatError` naming the library, its installed version, the internal and the kit feature
that needs it, so a speedup never switches itself off silently.
:data:`INTERNALS` lists the class-level ones for the tests.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from vlfeedback_kit.errors import UserError

CHECKED = {"trl": "1.16.0", "transformers": "5.25.0", "peft": "0.21.2", "accelerate": "1.16.0", "torch": "2.14.1"}
"""The library versions every internal below was read in (transformers' also in 5.24)."""


OFF = {
    "checkpoint_policy": "use checkpoint_policy full",
    "full_checkpoint_layers": "set full_checkpoint_layers 0",
    "train_sampling_strategy": "use train_sampling_strategy random",
    "bench real shapes": "use --shape tiny",
    "bench tokens per step": "run the benchmark on that version",
    "init_adapter": "drop init_adapter (start a new adapter)",
    "reference_policy init": "use reference_policy base",
    "fsdp2 on CPU": "train on GPUs, or with the multi_gpu accelerate config (DDP) on the CPU",
}
"""How to turn off a feature that is not a boolean flag (the others: ``set FEATURE false``)."""


class CompatError(UserError):
    """An internal of TRL / transformers / PEFT / accelerate / torch that a kit feature needs is missing or changed."""


def installed(library: str) -> str:
    """The installed version of ``library`` ("not installed" when it is not)."""
    try:
        return version(library)
    except PackageNotFoundError:
        return "not installed"


def incompatible(library: str, internal: str, feature: str, change: str = "is missing") -> CompatError:
    """The one-line error for an ``internal`` of ``library`` that ``feature`` needs and that ``change``d."""
    off = OFF.get(feature, f"set {feature} false")
    return CompatError(
        f"{feature} needs {library} {internal}, which {change} in {library} {installed(library)} (the kit checked "
        f"it against {library} {CHECKED[library]}); install {library}=={CHECKED[library]}, or {off}"
    )


def _require_method(owner: type, name: str, parameters: tuple[str, ...], library: str, feature: str) -> Callable:
    """``owner.name``, refused when it is gone or no longer takes ``parameters`` (in that order, after self)."""
    method = getattr(owner, name, None)
    internal = f"{owner.__name__}.{name}({', '.join(parameters)})"
    if not callable(method):
        raise incompatible(library, internal, feature)
    found = tuple(p for p in inspect.signature(method).parameters if p != "self")[: len(parameters)]
    if found != parameters:
        raise incompatible(library, internal, feature, f"takes ({', '.join(found)}) instead")
    return method


# --- TRL 1.16.0 / PEFT 0.21.2: a run that starts from a pretrained adapter (init_adapter) -----------------------

REFERENCE_ADAPTER = "ref"
"""TRL 1.16.0: the name ``DPOTrainer.__init__`` gives the frozen copy of a passed ``PeftModel``'s adapter; its
``compute_ref_log_probs`` and ``_compute_loss`` use that adapter as the reference when the model has it, else the
model with adapters disabled (the base)."""


def load_base_model(model_id: str, args: Any, quantization_config: Any) -> Any:
    """TRL 1.16.0: ``trl.trainer.utils.create_model_from_path`` with the keyword arguments ``DPOTrainer.__init__``
    builds for a model id (``model_init_kwargs``, the quantization config, ``device_map=None`` under DDP / DeepSpeed,
    ``trust_remote_code``), so a run from an adapter loads its base exactly as a run from the model id does."""
    try:
        from trl.trainer.utils import create_model_from_path
    except ImportError as err:
        raise incompatible("trl", "trl.trainer.utils.create_model_from_path", "init_adapter") from err
    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return create_model_from_path(model_id, **kwargs)


def peft_configs(model: Any, feature: str) -> dict:
    """PEFT 0.21.2: ``PeftModel.peft_config``, adapter name -> config, of a (wrapped) PEFT model."""
    configs = getattr(getattr(model, "module", model), "peft_config", None)
    if not isinstance(configs, dict):
        raise incompatible("peft", "PeftModel.peft_config", feature)
    return configs


def check_reference_adapter(model: Any, wanted: bool) -> None:
    """Keep TRL's frozen copy (:data:`REFERENCE_ADAPTER`) for ``reference_policy init`` and refuse a TRL that made
    none; delete it for ``reference_policy base`` (TRL then disables the adapters: the base is the reference)."""
    configs = peft_configs(model, "init_adapter")
    if wanted and REFERENCE_ADAPTER not in configs:
        raise incompatible(
            "trl", f"DPOTrainer's frozen {REFERENCE_ADAPTER!r} copy of a pretrained adapter", "reference_policy init"
        )
    if not wanted and REFERENCE_ADAPTER in configs:
        getattr(model, "module", model).delete_adapter(REFERENCE_ADAPTER)


@contextmanager
def trained_adapter_only(model: Any) -> Iterator[None]:
    """PEFT 0.21.2: ``PeftModel.save_pretrained`` saves every adapter of ``peft_config`` unless given
    ``selected_adapters`` (transformers' ``Trainer._save`` gives none); while on, it saves all but TRL's frozen
    reference copy, so a run dir and its checkpoints hold the trained adapter only (a resumed run rebuilds the copy
    from ``init_adapter``)."""
    unwrapped = getattr(model, "module", model)
    configs = peft_configs(model, "init_adapter") if hasattr(unwrapped, "peft_config") else {}
    if REFERENCE_ADAPTER not in configs:
        yield
        return
    trained = [name for name in configs if name != REFERENCE_ADAPTER]
    unwrapped.save_pretrained = functools.partial(unwrapped.save_pretrained, selected_adapters=trained)
    try:
        yield
    finally:
        del unwrapped.save_pretrained  # the class's method again


# --- TRL 1.16.0: DPOTrainer and its vision collator -------------------------------------------------------------


def dpo_loss_methods(feature: str) -> None:
    """TRL 1.16.0: ``DPOTrainer._compute_loss(model, inputs, return_outputs)`` (the kit overrides it to serve cached
    reference log-probs and to pack pairs) and ``DPOTrainer.compute_ref_log_probs(model, inputs)`` (the reference
    forward of the cache's pass and self-check)."""
    from trl import DPOTrainer

    _require_method(DPOTrainer, "_compute_loss", ("model", "inputs", "return_outputs"), "trl", feature)
    _require_method(DPOTrainer, "compute_ref_log_probs", ("model", "inputs"), "trl", feature)


@contextmanager
def reference_from_inputs(trainer: Any) -> Iterator[None]:
    """TRL 1.16.0: while on, ``DPOTrainer.precompute_ref_logps`` makes ``_compute_loss`` read the reference log-probs
    from the batch's ``ref_chosen_logps`` / ``ref_rejected_logps`` instead of running the reference model."""
    check_reference_switch(trainer)
    trainer.precompute_ref_logps = True
    try:
        yield
    finally:
        trainer.precompute_ref_logps = False


def check_reference_switch(trainer: Any) -> None:
    """TRL 1.16.0: the ``precompute_ref_logps`` attribute :func:`reference_from_inputs` turns on exists."""
    if not hasattr(trainer, "precompute_ref_logps"):
        raise incompatible("trl", "DPOTrainer.precompute_ref_logps", "ref_cache")


def is_vision_dataset(trainer: Any, feature: str) -> bool:
    """TRL 1.16.0: ``DPOTrainer._is_vision_dataset``, whether the rows carry images (and the vision collator runs)."""
    if not hasattr(trainer, "_is_vision_dataset"):
        raise incompatible("trl", "DPOTrainer._is_vision_dataset", feature)
    return trainer._is_vision_dataset


def wrap_collator_processor(collator: Any, wrap: Callable[[Any], Any]) -> None:
    """TRL 1.16.0: ``DataCollatorForVisionPreference.processor``, the processor its ``torch_call`` calls (for the
    prompts with their images, then the chosen and rejected texts), replaced by ``wrap(processor)``."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    if not isinstance(collator, DataCollatorForVisionPreference) or "processor" not in vars(collator):
        raise incompatible("trl", "DataCollatorForVisionPreference.processor", "share_image_features")
    collator.processor = wrap(collator.processor)


def repeated_half(images: list | None, text: list | None) -> int:
    """TRL 1.16.0: ``DataCollatorForVisionPreference.torch_call`` passes the processor each row's image list and
    prompt twice, as the same objects (``[...] * 2``: chosen half, then rejected half). The size of a half; 0 for a
    call without images (the chosen / rejected texts); a CompatError when images come in another layout, since image
    sharing would then quietly process and encode every image twice."""
    if images is None or text is None:
        return 0
    half = len(text) // 2
    repeated = len(images) == len(text) == 2 * half > 0 and all(
        images[i] is images[i + half] and text[i] is text[i + half] for i in range(half)
    )
    if not repeated:
        raise incompatible(
            "trl",
            "DataCollatorForVisionPreference.torch_call layout (each row's images and prompt repeated for chosen and "
            "rejected as the same objects)",
            "share_image_features",
            "changed",
        )
    return half


def selective_checkpointing() -> Callable:
    """TRL 1.16.0: ``trl.models.enable_selective_activation_checkpointing`` (``checkpoint_policy save_attention``)."""
    try:
        from trl.models import enable_selective_activation_checkpointing
    except ImportError as err:
        raise incompatible("trl", "trl.models.enable_selective_activation_checkpointing", "checkpoint_policy") from err
    return enable_selective_activation_checkpointing


def fused_log_probs(outputs: Any) -> Any:
    """transformers 5.25.0 / TRL 1.16.0: TRL calls the model with ``fused_lm_head=True`` and reads per-token
    ``log_probs`` from the output, which prefix sharing unpacks."""
    log_probs = getattr(outputs, "log_probs", None)
    if log_probs is None:
        raise incompatible("transformers", "the fused_lm_head output's log_probs", "share_prompt_prefix")
    return log_probs


# --- transformers 5.25.0: Trainer internals ------------------------------------------------------------------------


def trainer_columns_hooks(feature: str) -> None:
    """transformers 5.25.0: ``Trainer._set_signature_columns_if_needed`` (which the kit extends with ``pair_key`` and
    the length column), ``Trainer._remove_unused_columns`` (which drops every other column),
    ``Trainer._prepare_inputs`` and ``Trainer._get_eval_sampler``."""
    from transformers import Trainer

    _require_method(Trainer, "_set_signature_columns_if_needed", (), "transformers", feature)
    _require_method(Trainer, "_remove_unused_columns", ("dataset", "description"), "transformers", feature)
    _require_method(Trainer, "_prepare_inputs", ("inputs",), "transformers", feature)
    _require_method(Trainer, "_get_eval_sampler", ("eval_dataset",), "transformers", feature)


def signature_columns(trainer: Any) -> list[str]:
    """transformers 5.25.0: ``Trainer._signature_columns``, the columns ``remove_unused_columns`` keeps."""
    columns = getattr(trainer, "_signature_columns", None)
    if not isinstance(columns, list):
        raise incompatible("transformers", "Trainer._signature_columns (a list)", "ref_cache", "changed")
    return columns


def remove_unused_columns(trainer: Any, dataset: Any, description: str) -> Any:
    """transformers 5.25.0: ``Trainer._remove_unused_columns`` (the reference pass loads rows as training does)."""
    return trainer._remove_unused_columns(dataset, description=description)


def prepare_inputs(trainer: Any, batch: dict) -> dict:
    """transformers 5.25.0: ``Trainer._prepare_inputs`` (tensors to the device, as a training step does)."""
    return trainer._prepare_inputs(batch)


def trained_tokens(trainer: Any) -> int:
    """transformers 5.25.0: ``Trainer._total_train_tokens`` (tokens seen so far; the benchmark's tokens per step)."""
    if not hasattr(trainer, "_total_train_tokens"):
        raise incompatible("transformers", "Trainer._total_train_tokens", "bench tokens per step")
    return int(trainer._total_train_tokens)


def model_from_config(model_class: type, config: Any, **kwargs: Any) -> Any:
    """transformers 5.25.0: ``PreTrainedModel._from_config(config, **kwargs)`` (a model of a concrete class from a
    config, honouring ``dtype`` and ``attn_implementation``; the benchmark's real-shape models)."""
    build = getattr(model_class, "_from_config", None)
    if not callable(build):
        raise incompatible("transformers", f"{model_class.__name__}._from_config", "bench real shapes")
    return build(config, **kwargs)


def pair_keys_lost() -> CompatError:
    """The error for a batch that reached the loss without its ``pair_keys`` while the reference cache is on."""
    return incompatible(
        "transformers",
        "Trainer._remove_unused_columns keeping the columns of Trainer._signature_columns (the kit adds pair_key)",
        "ref_cache",
        "changed: the pair_key column did not reach the batch",
    )


def end_training(trainer: Any) -> None:
    """transformers >= 5.18: ``Trainer.end()`` finishes the trackers and destroys the process group (as TRL's
    script does); older versions have nothing to end."""
    from packaging.version import Version

    if Version(installed("transformers")) >= Version("5.18.0"):
        trainer.end()


# --- transformers 5.25.0: model internals --------------------------------------------------------------------------


def inner_vlm(model: Any) -> Any:
    """transformers >= 5.17 (checked 5.25.0): the module that owns ``get_image_features`` and whose forward accepts
    ``mm_encoder_outputs`` (e.g. ``Qwen2VLModel``), where image sharing hands in features computed once."""
    from vlfeedback_kit.serving import find_inner_vlm

    inner = find_inner_vlm(model)
    if inner is None:
        raise incompatible(
            "transformers",
            f"an inner model of {type(model).__name__} accepting mm_encoder_outputs",
            "share_image_features",
        )
    return inner


def pooled_features(features: Any) -> Any:
    """transformers 5.25.0: ``get_image_features(..., return_dict=True).pooler_output``, the per-image features the
    language model places at the image tokens."""
    pooled = getattr(features, "pooler_output", None)
    if pooled is None:
        raise incompatible(
            "transformers", "get_image_features(return_dict=True).pooler_output", "share_image_features"
        )
    return pooled


def image_token_id(config: Any) -> int:
    """transformers 5.25.0: a VLM config's ``image_token_id`` (``image_token_index`` in some families), the
    placeholder id image sharing counts to tell a repeated batch."""
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    if token is None:
        raise incompatible("transformers", f"{type(config).__name__}.image_token_id", "share_image_features")
    return token


def attn_implementation(config: Any) -> str:
    """transformers 5.25.0: ``PreTrainedConfig._attn_implementation``, the attention kernel the model runs (prefix
    sharing needs one that honours a custom 4-D mask)."""
    attention = getattr(config, "_attn_implementation", None)  # a loaded model's config always names its kernel
    if attention is None:
        raise incompatible("transformers", "PreTrainedConfig._attn_implementation", "share_prompt_prefix")
    return attention


def rope_index(inner: Any) -> Callable | None:
    """transformers 5.25.0: Qwen-VL's ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, ...)``, the 3-D
    M-RoPE positions prefix sharing keeps for every packed token. None for a family without M-RoPE (its forward takes
    no ``image_grid_thw``); a CompatError when an M-RoPE family lost it (1-D positions would change the numbers)."""
    if "image_grid_thw" not in inspect.signature(inner.forward).parameters:
        return None
    return _require_method(
        type(inner), "get_rope_index", ("input_ids", "mm_token_type_ids", "image_grid_thw"), "transformers",
        "share_prompt_prefix",
    ).__get__(inner)  # fmt: skip


def checkpointing_on(layer: Any) -> bool:
    """transformers 5.25.0: ``GradientCheckpointingLayer.gradient_checkpointing``, whether the layer checkpoints."""
    if not hasattr(layer, "gradient_checkpointing"):
        raise incompatible(
            "transformers", "GradientCheckpointingLayer.gradient_checkpointing", "full_checkpoint_layers"
        )
    return bool(layer.gradient_checkpointing)


def set_checkpoint_function(layer: Any, function: Callable) -> None:
    """transformers 5.25.0: ``GradientCheckpointingLayer._gradient_checkpointing_func``, the checkpoint call a layer
    runs its forward through (set when checkpointing is enabled): ``full_checkpoint_layers`` gives some layers plain
    checkpointing instead of the selective policy."""
    if not hasattr(layer, "_gradient_checkpointing_func"):
        raise incompatible(
            "transformers", "GradientCheckpointingLayer._gradient_checkpointing_func", "full_checkpoint_layers"
        )
    layer._gradient_checkpointing_func = function


def checkpointing_enable(model: Any) -> Callable:
    """transformers 5.25.0: ``PreTrainedModel.activation_checkpointing_enable``, what the Trainer calls to turn
    checkpointing on (``gradient_checkpointing_enable`` is its alias); the kit wraps it to inject its policy."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None:
        raise incompatible("transformers", "PreTrainedModel.activation_checkpointing_enable", "checkpoint_policy")
    return enable


# --- PEFT 0.21.2, accelerate 1.16.0, torch 2.14.1 ------------------------------------------------------------------


def lora_dropout_rates(model: Any) -> list[float]:
    """PEFT 0.21.2: the dropout rate of every adapter of every ``LoraLayer`` (its ``lora_dropout`` ModuleDict; TRL's
    ``disable_dropout`` sets them to 0). LoRA input sharing is exact only when all are 0."""
    import torch
    from peft.tuners.lora import LoraLayer

    rates = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            dropouts = getattr(module, "lora_dropout", None)
            if not isinstance(dropouts, torch.nn.ModuleDict):
                raise incompatible("peft", "LoraLayer.lora_dropout (a ModuleDict)", "share_lora_inputs")
            rates += [getattr(dropout, "p", 0.0) for dropout in dropouts.values()]
    return rates


def lora_ranks(model: Any) -> list[int]:
    """PEFT 0.21.2: the rank of every adapter of every ``LoraLayer`` (its ``r`` dict); ``save_matmuls`` recomputes
    products no wider than the largest (LoRA's up-projections)."""
    from peft.tuners.lora import LoraLayer

    ranks = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            if not isinstance(getattr(module, "r", None), dict):
                raise incompatible("peft", "LoraLayer.r (a dict of adapter ranks)", "checkpoint_policy")
            ranks += list(module.r.values())
    return ranks


def disable_input_casting(model: Any) -> Any:
    """PEFT 0.21.2: ``peft.helpers.disable_input_dtype_casting(model)``, the context in which LoRA layers use their
    input as is instead of an fp32 copy (``share_lora_inputs``)."""
    try:
        from peft.helpers import disable_input_dtype_casting
    except ImportError as err:
        raise incompatible("peft", "peft.helpers.disable_input_dtype_casting", "share_lora_inputs") from err
    return disable_input_dtype_casting(model)


def autocast_active(accelerator: Any) -> bool:
    """accelerate 1.16.0: ``Accelerator.native_amp``, whether the forward runs under torch autocast (bf16 / fp16),
    where LoRA input sharing is exact."""
    if not hasattr(accelerator, "native_amp"):
        raise incompatible("accelerate", "Accelerator.native_amp", "share_lora_inputs")
    return bool(accelerator.native_amp)


def fsdp2_over_gloo(accelerator: Any) -> None:
    """accelerate 1.16.0: turn a CPU (``MULTI_CPU``, gloo) state that the launcher was asked to run as FSDP2 into the
    FSDP state a GPU launch gets — ``AcceleratorState.distributed_type`` / ``fsdp_plugin`` (accelerate sets them only
    from GPU-like distributed types) and ``PartialState``'s shared ``distributed_type`` — so ``Accelerator.prepare``
    shards the model with accelerate's own ``fsdp2_prepare_model`` (``fully_shard``, DTensor parameters)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not isinstance(state, AcceleratorState) or "distributed_type" not in PartialState._shared_state:
        raise incompatible("accelerate", "AcceleratorState / PartialState._shared_state", "fsdp2 on CPU")
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment, as Accelerator() reads it
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def ignore_ddp_buffers(model: Any, names: list[str]) -> None:
    """torch 2.14.1: ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`` (what TRL's script sets
    by hand as ``_ddp_params_and_buffers_to_ignore``), for ``ignore_bias_buffers``."""
    from torch.nn.parallel import DistributedDataParallel

    ignore = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if ignore is None:
        raise incompatible(
            "torch", "DistributedDataParallel._set_params_and_buffers_to_ignore_for_model", "ignore_bias_buffers"
        )
    ignore(model, names)


def aten_ops(*names: str) -> set:
    """torch 2.14.1: the default overloads of the aten ops named (the matrix products and fused attention kernels
    whose outputs ``checkpoint_policy save_matmuls`` keeps; a renamed one would quietly be recomputed instead)."""
    import torch

    missing = [name for name in names if getattr(torch.ops.aten, name, None) is None]
    if missing:
        raise incompatible("torch", f"torch.ops.aten.{missing[0]}", "checkpoint_policy")
    return {getattr(torch.ops.aten, name).default for name in names}


@dataclass(frozen=True)
class Internal:
    """One class- or module-level internal: ``owner`` (``module:Class``) has ``attribute``."""

    library: str
    owner: str
    attribute: str
    feature: str

    def check(self) -> None:
        """Raise a CompatError when the installed library lacks it."""
        module, _, name = self.owner.partition(":")
        owner = __import__(module, fromlist=[name or "_"])
        owner = getattr(owner, name) if name else owner
        fields = getattr(owner, "__dataclass_fields__", {})
        if getattr(owner, self.attribute, None) is None and self.attribute not in fields:
            raise incompatible(self.library, f"{self.owner}.{self.attribute}", self.feature)


INTERNALS: tuple[Internal, ...] = (
    Internal("trl", "trl:DPOTrainer", "_compute_loss", "ref_cache"),
    Internal("trl", "trl:DPOTrainer", "compute_ref_log_probs", "ref_cache"),
    Internal("trl", "trl.trainer.dpo_trainer:DataCollatorForVisionPreference", "processor", "share_image_features"),
    Internal("trl", "trl.models", "enable_selective_activation_checkpointing", "checkpoint_policy"),
    Internal("transformers", "transformers:Trainer", "_set_signature_columns_if_needed", "ref_cache"),
    Internal("transformers", "transformers:Trainer", "_remove_unused_columns", "ref_cache"),
    Internal("transformers", "transformers:Trainer", "_prepare_inputs", "ref_cache"),
    Internal("transformers", "transformers:Trainer", "_get_eval_sampler", "train_sampling_strategy"),
    Internal("transformers", "transformers:PreTrainedModel", "_from_config", "bench real shapes"),
    Internal("transformers", "transformers:PreTrainedConfig", "_attn_implementation", "share_prompt_prefix"),
    Internal("transformers", "transformers:Qwen2VLModel", "get_rope_index", "share_prompt_prefix"),
    Internal("transformers", "transformers:PreTrainedModel", "activation_checkpointing_enable", "checkpoint_policy"),
    Internal(
        "transformers",
        "transformers.modeling_layers:GradientCheckpointingLayer",
        "gradient_checkpointing",
        "full_checkpoint_layers",
    ),  # fmt: skip
    Internal("trl", "trl.trainer.utils", "create_model_from_path", "init_adapter"),
    Internal("peft", "peft.helpers", "disable_input_dtype_casting", "share_lora_inputs"),
    Internal(
        "torch",
        "torch.nn.parallel:DistributedDataParallel",
        "_set_params_and_buffers_to_ignore_for_model",
        "ignore_bias_buffers",
    ),  # fmt: skip
)
"""The class- and module-level internals (instance attributes are checked where the trainer reads them)."""


def check_installed() -> None:
    """Every internal of :data:`INTERNALS` is there (a CompatError naming the first one missing)."""
    for internal in INTERNALS:
        internal.check()
