"""What a training run leaves in its output folder: the records the model card and the eval read."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import yaml

from vlfeedback_kit.files import write_json, write_text

CURVES = "training_curves.png"
CURVE_METRICS = (("loss", "DPO loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))
HYPERPARAMETERS = (
    "beta", "loss_type", "loss_weights", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "bf16", "activation_checkpointing", "seed",
)  # fmt: skip
LORA = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def plot_curves(log_history: list[dict], path: Path) -> bool:
    """Loss, reward accuracy and reward margin against the step, one panel each; False when nothing was logged."""
    points = {key: [(e["step"], e[key]) for e in log_history if key in e] for key, _ in CURVE_METRICS}
    if not any(points.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3), constrained_layout=True)
    for axis, (key, title) in zip(axes, CURVE_METRICS):
        if points[key]:
            steps, values = zip(*points[key])
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def hardware() -> str:
    """A one-line description of the accelerators this process sees."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()})"


def _plain(value):
    return value if isinstance(value, (int, float, str, bool, type(None), list, dict)) else str(value)


def dataset_origin(folder: Path) -> dict:
    """What a local kit-built dataset says about its ratings (``cards.dataset.release_origin``): ``origin``, and
    the judge models of a release judged through the kit's pipeline; empty for a folder the kit did not build."""
    from vlfeedback_kit.cards.dataset import read_judge, release_origin

    report = folder / "build_report.json"
    if not report.is_file():
        return {}
    judges = read_judge(folder)
    origin = {"origin": release_origin(json.loads(report.read_text(encoding="utf-8")), judges)}
    return origin | ({"judges": sorted({judge["model"] for judge in judges})} if judges else {})


def cache_file(path: Path, dataset: Path | None) -> str:
    """The reference cache's file, relative to the local dataset folder it lives in (else its name): no location."""
    path = Path(path).resolve()
    if dataset is not None and path.is_relative_to(dataset.resolve()):
        return path.relative_to(dataset.resolve()).as_posix()
    return path.name


def locate_local_base(out: Path, base: str) -> None:
    """Point the adapter's ``base_model_name_or_path`` at the local base's absolute path (PEFT records it as given,
    maybe relative), so ``eval``/``space --adapter RUN_DIR`` load it from any directory on this machine."""
    config = out / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = os.path.abspath(base)
        write_json(config, data)


def resolved_config(script_args, training_args, model_args) -> dict:
    """Every parsed field, grouped by dataclass, as plain data."""
    return {
        type(script_args).__name__: {k: _plain(v) for k, v in dataclasses.asdict(script_args).items()},
        type(training_args).__name__: {k: _plain(v) for k, v in training_args.to_dict().items()},
        type(model_args).__name__: {k: _plain(v) for k, v in dataclasses.asdict(model_args).items()},
    }


def write_outputs(trainer, processor, result, script_args, training_args, model_args, data, model, audit) -> None:
    """Processor, optional merged weights, run_info.json, metrics, curves, resolved config and audit.

    ``data`` and ``model`` are the resolved sources (``dpo.Source``): the exact commit, or a local folder's
    content digest. No record holds an absolute local path: a local base model or dataset is named by its folder
    name (``{"name": ..., "local": true}``), never located; only PEFT's ``adapter_config.json`` keeps the local
    base's absolute path, for loading on this machine, and ``publish model`` rewrites it to the name.
    """
    import peft
    import transformers
    import trl

    from vlfeedback_kit.cards.model import source_record, unlocated
    from vlfeedback_kit.files import folder_name
    from vlfeedback_kit.training.distributed import describe
    from vlfeedback_kit.training.families import enabled_speedups, family_of
    from vlfeedback_kit.training.init_adapter import start_record

    out = Path(training_args.output_dir)
    processor.save_pretrained(out)
    merged = False
    if training_args.merge and hasattr(trainer.model, "merge_and_unload"):
        trainer.model.merge_and_unload().save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")
        merged = True
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    curves = plot_curves(trainer.state.log_history, out / CURVES)
    args = training_args.to_dict()
    hyperparameters = {k: _plain(args[k]) for k in HYPERPARAMETERS if k in args}
    if model_args.use_peft:
        hyperparameters |= {k: _plain(getattr(model_args, k)) for k in LORA}
    last = next((e for e in reversed(trainer.state.log_history) if "rewards/accuracies" in e), {})
    info = {
        "base_model": source_record(model.name, model.local),
        "base_model_revision": model.key,
        "base_model_requested_revision": model_args.model_revision,
        "dataset": {
            "name": folder_name(data.name) if data.local else data.name,
            **({"local": True} if data.local else {}),
            "config": script_args.dataset_config,
            "split": script_args.dataset_train_split,
            "revision": data.key,
            "requested_revision": script_args.dataset_revision,
            **(dataset_origin(Path(data.name)) if data.local else {}),
        },
        "recipe": script_args.recipe_name,
        **start_record(getattr(trainer, "init_adapter", None), training_args),
        "hyperparameters": hyperparameters,
        "hardware": script_args.hardware or hardware(),
        "num_processes": trainer.accelerator.num_processes,
        "distributed": describe(trainer),
        "global_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * trainer.accelerator.num_processes,
        "peft": bool(model_args.use_peft),
        "merged": merged,
        "model_type": family_of(trainer.model),
        "speedups": [s for s in enabled_speedups(training_args) if s != "ref_cache" or trainer.ref_cache is not None],
        "image_features": {  # one encode per unique image a step; the reference pass reuses the policy's
            "encoded": sum(h.encoded_images for h in getattr(trainer, "image_sharing", [])),
            "reused": sum(h.reused for h in getattr(trainer, "image_sharing", [])),
        },
        "metrics": {"train_loss": result.metrics.get("train_loss"), **{k: v for k, v in last.items() if "/" in k}},
        "reference_cache": None
        if trainer.ref_cache is None
        else {
            "file": cache_file(trainer.ref_cache.path, Path(data.name) if data.local else None),
            "hits": trainer.ref_cache.hits,
            "misses": trainer.ref_cache.misses,
            "reference_forwards": trainer.reference_forwards,
            "entries_sent": trainer.ref_cache.sent,  # this process's entries shared with the others, each once
            "self_check": trainer.ref_cache_check,
        },
        "curves": CURVES if curves else None,
        "library_versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "run_info.json", unlocated(info))
    write_text(
        out / "resolved_config.yaml",
        yaml.safe_dump(unlocated(resolved_config(script_args, training_args, model_args)), sort_keys=False),
    )
    if model.local:
        locate_local_base(out, model.name)
    if audit is not None:
        write_json(out / "audit.json", audit.to_json())
    from vlfeedback_kit.cards.model import write_model_card

    write_model_card(out)
