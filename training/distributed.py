"""What a distributed launch asked for, what actually ran, and FSDP2 on CPUs (gloo) through accelerate's own code.

``accelerate launch`` hands the script its config through the environment (``ACCELERATE_USE_FSDP``,
``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``, ``WORLD_SIZE``...). On CPUs accelerate 1.16 runs an FSDP config as
DDP (its state becomes FSDP only from GPU-like distributed types). The kit turns such a launch into the FSDP state a
GPU launch gets (:func:`.compat.fsdp2_over_gloo`), so the model is prepared by accelerate's ``fsdp2_prepare_model``
(``fully_shard``: DTensor parameters) over gloo: the same library code path as on GPUs, testable on this machine.
FSDP version 1 on CPUs stays DDP, with a warning. Whatever ran is recorded (:func:`describe`) in ``run_info.json``
and the model card; a launch that became something else than its config asked is a warning there and on the console.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested() -> dict:
    """What the launcher was asked for, from the environment ``accelerate launch`` / ``torchrun`` set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if _flag("ACCELERATE_USE_FSDP"):
        return {"distributed_type": "FSDP", "fsdp_version": int(os.environ.get("FSDP_VERSION", "1"))}
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return {"distributed_type": "DEEPSPEED"}
    return {"distributed_type": "MULTI" if world > 1 else "NO"}


def num_machines() -> int:
    """The number of nodes of this launch: torchrun's ``GROUP_WORLD_SIZE`` (one agent a node), else 1."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


def settle_launch(trainer: Any) -> None:
    """Make an FSDP2 launch on CPUs really FSDP2 (the trainer's accelerator, DDP over gloo, switched to accelerate's
    FSDP state before the model is prepared), and warn about any launch that runs as something else than asked."""
    from accelerate.utils import DistributedType

    from vlfeedback_kit.training import compat

    asked = requested()
    accelerator = trainer.accelerator
    trainer._launch_warnings = []
    on_cpu = accelerator.distributed_type == DistributedType.MULTI_CPU
    if asked["distributed_type"] == "FSDP" and on_cpu and asked["fsdp_version"] == 2:
        if getattr(trainer.args, "activation_checkpointing", False) and _flag("FSDP_ACTIVATION_CHECKPOINTING"):
            raise ValueError(
                "fsdp_activation_checkpointing and activation_checkpointing are both on; keep one (the recipe's "
                "activation_checkpointing: the kit's checkpoint_policy acts on it)"
            )
        compat.fsdp2_over_gloo(accelerator)
        trainer.is_fsdp_enabled = True
        if accelerator.is_main_process:
            logger.warning(
                "FSDP2 on CPUs: accelerate would run this launch as DDP; the kit prepares the model with accelerate's "
                "FSDP2 (fully_shard, DTensor parameters) over gloo instead"
            )
    if getattr(trainer, "is_fsdp_enabled", False) and getattr(trainer.args, "merge", False):
        raise ValueError(
            "merge true under FSDP: the trained model's parameters are shards on every process, and merging needs "
            "them whole; train with merge false (the run saves a whole adapter) and merge that adapter in one "
            "process (PeftModel.from_pretrained(base, RUN_DIR).merge_and_unload())"
        )
    ran = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if asked["distributed_type"] == "FSDP" and ran != "FSDP":
        hint = " (use fsdp_version: 2, training/accelerate/fsdp2.yaml)" if on_cpu else ""
        processes = accelerator.num_processes
        warn(
            trainer,
            f"the accelerate config asks for FSDP version {asked['fsdp_version']}, and this launch runs as {ran} over "
            f"{processes} process(es): parameters replicated, not sharded{hint}",
        )
    elif asked["distributed_type"] == "DEEPSPEED" and ran != "DEEPSPEED":
        warn(trainer, f"the accelerate config asks for DeepSpeed, and this launch runs as {ran}: DeepSpeed needs GPUs")
    elif asked["distributed_type"] == "MULTI" and ran == "NO":
        warn(trainer, "the launch started several processes, and this one runs alone (no process group)")


def warn(trainer: Any, message: str) -> None:
    """A launch that became something else than its config asked: on the console (main process) and in the run's
    records (``run_info.json`` ``distributed.warnings``)."""
    trainer.__dict__.setdefault("_launch_warnings", []).append(message)
    if trainer.accelerator.is_main_process:
        logger.warning(message)


def lora_input_sharing_allowed(trainer: Any) -> bool:
    """``share_lora_inputs`` is checked against torch autocast over whole parameters only; under FSDP2 (whose
    MixedPrecisionPolicy casts parameters in the all-gather) and DeepSpeed (its own bf16 engine) it is refused: turned
    off with the reason on the console and in ``run_info.json``, and recorded off."""
    engine = "DeepSpeed" if trainer.is_deepspeed_enabled else "FSDP" if trainer.is_fsdp_enabled else None
    if engine is None:
        return True
    trainer.args.share_lora_inputs = False
    warn(
        trainer,
        f"share_lora_inputs is off under {engine}: the kit checked it against torch autocast on whole parameters "
        f"only, not with {engine}'s own mixed precision; set share_lora_inputs false in the recipe to silence this",
    )
    return False


def shards_parameters(trainer: Any) -> bool:
    """Whether the trainer's set-up shards parameters across processes (FSDP, DeepSpeed ZeRO-3): then every process
    must take part in each forward. ZeRO-1/2 shard optimizer states and gradients only: whole weights on each rank."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3))


def parameters_sharded(model: Any) -> bool:
    """Whether the model's parameters are sharded across processes: DTensor (FSDP2) or DeepSpeed ZeRO-3 partitions."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def describe(trainer: Any) -> dict:
    """What ran, for ``run_info.json`` and the model card: the distributed type, world size, machines, whether the
    parameters were sharded, what the launcher was asked for, and any warning about a difference."""
    accelerator = trainer.accelerator
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    ran = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    record = {
        "distributed_type": ran,
        "world_size": accelerator.num_processes,
        "num_machines": num_machines(),
        "parameters_sharded": parameters_sharded(trainer.model_wrapped),
        "requested": requested(),
        "warnings": list(getattr(trainer, "_launch_warnings", [])),
    }
    if ran == "FSDP":
        record["fsdp_version"] = accelerator.state.fsdp_plugin.fsdp_version
    if plugin is not None:
        record["zero_stage"] = plugin.zero_stage
    return record


def save_model(trainer: Any, output_dir: str) -> None:
    """Save the trained model the way a single process does: under FSDP with a sharded state-dict type (the
    checkpoints' format, for resuming) the final save gathers the full state dict first (accelerate's
    ``set_state_dict_type`` for "sharded while training, full at the end"), so a LoRA run leaves a normal, whole PEFT
    adapter. A collective: every process calls it."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(output_dir)


def check_launch(config_path: str, training_args: Any, model_args: Any, cuda: bool) -> list[str]:
    """Validate an accelerate config against the parsed recipe before the launch: a UserError for a DeepSpeed config
    that cannot run here (``deepspeed`` not installed, no GPU) or whose options do not fit the recipe (the ZeRO-3 +
    LoRA / frozen-vision pitfalls the kit refuses); the returned lines say what the launch will become where that is
    not what the config names (FSDP and DDP on CPUs)."""
    import importlib.util

    import yaml

    from vlfeedback_kit.errors import UserError

    with open(config_path, encoding="utf-8") as file:
        config = yaml.safe_load(file) or {}
    name = os.path.basename(config_path)
    kind = str(config.get("distributed_type", "NO"))
    on_cpu = bool(config.get("use_cpu")) or not cuda
    if kind == "DEEPSPEED":
        check_deepspeed(name, config.get("deepspeed_config") or {}, config, training_args, model_args)
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(
                f"{name} runs DeepSpeed, which is not installed: pip install deepspeed (on a machine with NVIDIA GPUs "
                "and CUDA), or launch with fsdp2 / multi_gpu"
            )
        if on_cpu:
            raise UserError(f"{name} runs DeepSpeed, which needs GPUs; on the CPU launch with fsdp2 or multi_gpu")
        return []
    if not on_cpu:
        return []
    if kind == "FSDP":
        version = int((config.get("fsdp_config") or {}).get("fsdp_version", 1))
        if version == 2:
            return [
                f"{name} on the CPU: accelerate would run FSDP as DDP; the kit shards the model with accelerate's "
                "FSDP2 (fully_shard, DTensor parameters) over gloo instead"
            ]
        return [
            f"{name} on the CPU: FSDP version {version} runs as DDP over gloo (parameters replicated, not sharded)"
        ]
    if kind == "MULTI_GPU":
        return [f"{name} on the CPU: runs as DDP over gloo (MULTI_CPU), one process per --num_processes"]
    return []


def check_deepspeed(name: str, deepspeed: dict, config: dict, training_args: Any, model_args: Any) -> None:
    """Refuse a DeepSpeed config whose options do not fit the recipe, each with the reason."""
    from vlfeedback_kit.errors import UserError

    stage = int(deepspeed.get("zero_stage", 0))
    if stage != 3 and str(deepspeed.get("offload_param_device", "none")) != "none":
        raise UserError(f"{name}: offload_param_device offloads parameters, which only ZeRO-3 does; set it to none")
    precision = str(config.get("mixed_precision", "no"))
    recipe = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
    if precision != recipe:
        raise UserError(
            f"{name}: mixed_precision {precision} and the recipe's {recipe} differ (DeepSpeed takes its precision "
            f"from the accelerate config); set mixed_precision: {recipe} in {name}, or --bf16 / --fp16 in the recipe"
        )
    if stage != 3:
        return
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        raise UserError(
            f"{name}: ZeRO-3 partitions parameters, and bitsandbytes 4/8-bit weights cannot be partitioned by it; "
            "train QLoRA with zero2 or fsdp2"
        )
    if not deepspeed.get("zero3_save_16bit_model", False):
        raise UserError(
            f"{name}: without zero3_save_16bit_model: true a ZeRO-3 run saves only DeepSpeed's partitioned "
            "checkpoint, not a usable adapter or model; set it to true"
        )
    if training_args.activation_checkpointing and getattr(training_args, "checkpoint_policy", "full") != "full":
        raise UserError(
            f"{name}: checkpoint_policy {training_args.checkpoint_policy} needs non-reentrant checkpointing, which "
            "TRL replaces with reentrant checkpointing for LoRA under ZeRO-3; use checkpoint_policy full with ZeRO-3"
        )
