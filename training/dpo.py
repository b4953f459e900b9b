"""Silkie: DPO of a vision-language model on a VLFeedback pairing config, with TRL and the kit's VLM extensions.

# The tiny CPU recipe on the embedded sample (seconds; what the README's main job runs):
```bash
accelerate launch --config_file training/accelerate/cpu.yaml training/dpo.py --config training/recipes/tiny.yaml
```

# The paper's recipe on Qwen2.5-VL-7B-Instruct, one node of 8 GPUs, DeepSpeed ZeRO-2:
```bash
accelerate launch --config_file training/accelerate/zero2.yaml training/dpo.py \
    --config training/recipes/silkie-qwen2.5-vl-7b-lora.yaml \
    --dataset_name ORG/vlfeedback --dataset_revision v1.0.0
```

Any TRL flag overrides the recipe (``--max_steps 10 --output_dir runs/debug``); ``--resume_from_checkpoint true``
resumes from the last checkpoint in ``output_dir``. ``vlfeedback train --recipe NAME`` runs the same launch.

Outputs in ``output_dir``: the LoRA adapter (and ``merged/`` with ``--merge``), the processor, ``run_info.json``
(base model, dataset id + revision, hyperparameters, hardware, metrics), ``train_results.json``,
``training_curves.png``, ``resolved_config.yaml``, and ``audit.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

RUN_INFO = "run_info.json"

logger = logging.getLogger(__name__)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """TRL's parser over the script's dataclasses (``--config recipe.yaml`` plus flag overrides)."""
    from trl import ModelConfig, TrlParser

    from vlfeedback_kit.training.config import SilkieDPOConfig, SilkieScriptArguments

    dataclass_types = (SilkieScriptArguments, SilkieDPOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("dpo", help="Silkie DPO", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


def folder_fingerprint(folder: Path, suffixes: tuple[str, ...]) -> str:
    """``local-<hash>`` of a folder's files (names, sizes, modification times) with the given suffixes."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes and ".ref_logps" not in p.parts
    )
    listing = "\n".join(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return "local-" + hashlib.sha256(listing.encode()).hexdigest()[:12]


def dataset_revision(name: str, revision: str | None) -> str:
    """The exact revision trained on: a Hub commit sha, or a fingerprint of a local folder's data and records."""
    folder = Path(name)
    if folder.is_dir():
        return folder_fingerprint(folder, (".parquet", ".json", ".jsonl", ".arrow"))
    from huggingface_hub import HfApi

    return HfApi().dataset_info(name, revision=revision).sha


def model_revision(name: str, revision: str | None) -> str:
    """The exact model the reference comes from: a Hub commit sha, or a fingerprint of a local model folder."""
    if Path(name).is_dir():
        return folder_fingerprint(Path(name), (".json", ".safetensors", ".bin", ".model"))
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return HfApi().model_info(name, revision=revision).sha
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError):
        return revision or "main"  # offline: the requested revision is the best we know


def reference_cache(script_args, training_args, model_args, processor, revision: str):
    """The reference log-prob cache for this dataset revision, model revision and processor settings."""
    import trl

    from vlfeedback_kit.training.ref_cache import RefLogpCache, default_cache_dir

    if not training_args.ref_cache:
        return None
    processor_settings = hashlib.sha256(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    parts = {
        "dataset": [script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split, revision],
        "model": [
            model_args.model_name_or_path,
            model_revision(model_args.model_name_or_path, model_args.model_revision),
            str(model_args.dtype),
        ],
        "processor": processor_settings.hexdigest(),
        "max_length": training_args.max_length,
        "ld_alpha": training_args.ld_alpha,
        "trl": trl.__version__,
    }
    folder = (
        Path(training_args.ref_cache_dir)
        if training_args.ref_cache_dir
        else default_cache_dir(script_args.dataset_name)
    )
    return RefLogpCache.open(folder, parts)


def main(script_args, training_args, model_args) -> Path:
    """Train, save the adapter/processor/run records, and return the output folder."""
    import transformers
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import get_peft_config

    from vlfeedback_kit.training.audit import audit_dataset, check_audit
    from vlfeedback_kit.training.freeze import assert_no_vision_lora, freeze_vision, language_lora_targets
    from vlfeedback_kit.training.outputs import write_outputs
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    transformers.set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    dataset = load_dataset(script_args.dataset_name, script_args.dataset_config, revision=script_args.dataset_revision)
    revision = dataset_revision(script_args.dataset_name, script_args.dataset_revision)
    train_dataset = dataset[script_args.dataset_train_split]
    eval_dataset = dataset.get(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None

    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    if training_args.freeze_vision:
        freeze_vision(model)
    if model_args.use_peft and model_args.lora_target_modules is None:
        model_args.lora_target_modules = language_lora_targets()

    audit = None
    if training_args.audit:
        audit = audit_dataset(train_dataset, processor, training_args.max_length)
        print(audit.summary())
        check_audit(audit, training_args.audit_allow_response_truncation)

    trainer = SilkieDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        ref_cache=reference_cache(script_args, training_args, model_args, processor, revision),
        lengths=audit.lengths(training_args.share_prompt_prefix) if audit is not None else None,
    )
    if training_args.freeze_vision:
        assert_no_vision_lora(trainer.model)
    if model_args.use_peft and model_args.lora_dropout and training_args.disable_dropout:
        logger.warning(
            "lora_dropout=%s has no effect: TRL's disable_dropout (default true) sets every dropout to 0, LoRA's "
            "included; set disable_dropout: false to train with it",
            model_args.lora_dropout,
        )
    resume = training_args.resume_from_checkpoint
    resume = True if str(resume).lower() in ("true", "last") else resume
    result = trainer.train(resume_from_checkpoint=resume)

    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        write_outputs(trainer, processor, result, script_args, training_args, model_args, revision, audit)
        print(
            f"Silkie run in {output_dir}: train loss {result.metrics.get('train_loss', float('nan')):.4f}; adapter, "
            "README.md (model card), training_curves.png, run_info.json. Publish it with: vlfeedback publish model "
            f"{output_dir} --repo ORG/NAME --version 0.1.0"
        )
    trainer.accelerator.wait_for_everyone()
    return output_dir


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
