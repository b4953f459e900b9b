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
resumes from the last checkpoint in ``output_dir`` (saved with ``--save_strategy steps`` or ``epoch``).
``vlfeedback train --recipe NAME`` runs the same launch after parsing the recipe and flags with this script's parser.
A non-empty ``output_dir`` is refused unless the run resumes from it or ``--overwrite_output_dir true`` is given.

As in TRL's ``trl/scripts/dpo.py`` the trainer loads the model from ``model_init_kwargs`` (revision,
``trust_remote_code``, ``attn_implementation``, ``dtype``, plus the recipe's own ``model_init_kwargs``) with
``ModelConfig``'s quantization (``load_in_4bit`` / ``load_in_8bit``). The model and the dataset are loaded at the
commit their revisions resolve to when the run starts, and that commit keys the reference cache (``resolve.py``);
the trainer's speedups are ``trainer.py``, and every TRL / transformers internal they use is checked in ``compat.py``.

Outputs in ``output_dir``: the LoRA adapter (and ``merged/`` with ``--merge``), the processor, ``run_info.json``
(base model, dataset id + revision, hyperparameters, hardware, metrics), ``train_results.json``,
``training_curves.png``, ``resolved_config.yaml``, and ``audit.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.hub_ids import folder_or_hub_problem
from vlfeedback_kit.training.resolve import hub_commit, reference_cache, resolve_dataset, resolve_model
from vlfeedback_kit.training.resolve import local_dataset_key as local_dataset_key  # re-exported (eval/winrate.py)

PAIR_COLUMNS = ("chosen", "rejected")
"""The columns a pairing config has and DPO reads (``raw`` has one row per instruction instead)."""

logger = logging.getLogger(__name__)


def make_parser(prog: str | None = None):
    """TRL's parser over the script's dataclasses (``--config recipe.yaml`` plus flag overrides)."""
    from trl import ModelConfig, TrlParser

    from vlfeedback_kit.training.config import SilkieDPOConfig, SilkieScriptArguments

    # allow_abbrev=False: a shortened or misspelled flag (--max_step) is refused, never taken for another one
    return TrlParser((SilkieScriptArguments, SilkieDPOConfig, ModelConfig), prog=prog, allow_abbrev=False)


def parse_arguments(argv: list[str] | None = None) -> tuple:
    """The script's dataclasses from a recipe and flags; a misspelled or invalid flag is a UserError carrying the
    parser's (HfArgumentParser's, argparse's or a config's ``ValueError``) message alone."""

    def refuse(message: str):
        raise UserError(message)

    parser = make_parser()
    parser.error = refuse
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:
        raise UserError(str(err)) from err


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names (``true`` / ``last``: the newest in ``output_dir``); a
    UserError when there is none, so a launch never starts only to crash on it."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() not in ("true", "last"):
        if not Path(value).is_dir():
            raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
        return str(value)
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is None:
        raise UserError(
            f"--resume_from_checkpoint {value}: {output_dir} has no checkpoint-* folder to resume from (a run saves "
            "them with --save_strategy steps or epoch; the tiny recipe saves none); drop --resume_from_checkpoint"
        )
    return last


def check_output_dir(training_args, resume: str | None) -> None:
    """Refuse to train over an existing run: a non-empty ``output_dir`` is kept unless the run resumes from it or
    ``overwrite_output_dir`` says to write over it (as ``build`` and ``tiny-model`` refuse without ``--overwrite``)."""
    output_dir = Path(training_args.output_dir)
    if resume is not None or training_args.overwrite_output_dir or not output_dir.is_dir():
        return
    if any(output_dir.iterdir()):
        raise UserError(
            f"--output_dir {output_dir} already holds a run; resume it with --resume_from_checkpoint true (it needs "
            "checkpoint-* folders), write over it with --overwrite_output_dir true, or choose another --output_dir"
        )


def check_sources(script_args, model_args, resolve: bool = False) -> None:
    """Refuse, before anything is loaded, a dataset or model name that is neither a folder here nor a Hub id
    ``ORG/NAME`` (a typo), and a local dataset config that holds no preference pairs (``raw``). With ``resolve``,
    a Hub id is also resolved to a commit (before a launch: a missing repo is then one line, not a failed launch)."""
    named = (
        (script_args.dataset_name, script_args.dataset_revision, "dataset", "--dataset_name"),
        (model_args.model_name_or_path, model_args.model_revision, "model", "--model_name_or_path"),
    )
    for name, revision, repo_type, flag in named:
        problem = folder_or_hub_problem(name, flag) if name else f"{flag} is required"
        if problem:
            raise UserError(problem)
        if resolve and not Path(name).is_dir():
            hub_commit(name, revision, repo_type)
    folder = Path(script_args.dataset_name)
    if folder.is_dir():
        check_pair_config(folder, script_args.dataset_config, getattr(script_args, "pairs_from_raw", False))


def config_columns(folder: Path) -> dict[str, list[str] | None]:
    """Each config of a local dataset folder with its columns (None when the folder's metadata does not say)."""
    from datasets import get_dataset_config_names, load_dataset_builder

    columns = {}
    for name in get_dataset_config_names(str(folder)):
        features = load_dataset_builder(str(folder), name).info.features
        columns[name] = list(features) if features is not None else None
    return columns


def check_pair_config(folder: Path, config: str | None, pairs_from_raw: bool = False) -> None:
    """Refuse a config of ``folder`` that is not a pairing config (DPO needs ``chosen`` and ``rejected``), naming the
    folder's pairing configs. With ``pairs_from_raw`` the config may be any pairing policy built from ``raw``."""
    columns = config_columns(folder)
    pairs = [name for name, found in columns.items() if found is None or set(PAIR_COLUMNS) <= set(found)]
    if config in pairs or (pairs_from_raw and config not in columns):
        return
    what = "holds no preference pairs" if config in columns else f"is not a config of {folder}"
    raise UserError(
        f"--dataset_config {config} {what}; train on one of {folder}'s pairing configs: {', '.join(pairs) or 'none'}"
        + ("" if pairs else f" (rebuild it with `vlfeedback build --out {folder}`)")
    )


def check_pair_columns(columns: list[str], script_args) -> None:
    """The loaded split has the pair columns DPO reads (a Hub dataset's config can only be checked once loaded)."""
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"--dataset_config {script_args.dataset_config} of {script_args.dataset_name} has no {', '.join(missing)} "
            f"column (its columns: {', '.join(columns)}); train on a pairing config such as pairs"
        )


def load_training_data(script_args):
    """The dataset and its resolved source: the revision is resolved first and the load done at that commit, so a
    branch that moves meanwhile cannot make the records (and the reference cache) name data the run did not read."""
    from datasets import load_dataset

    data = resolve_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_revision)
    if getattr(script_args, "pairs_from_raw", False):  # the same rows, each image cached once (builders.load_pairs)
        from vlfeedback_kit.builders.load_pairs import load_pairs

        return load_pairs(script_args.dataset_name, script_args.dataset_config, revision=data.load), data
    return load_dataset(script_args.dataset_name, script_args.dataset_config, revision=data.load), data


def set_up_logging(training_args) -> None:
    """Log at the process's level (``log_level`` on the main process, ``log_level_replica`` elsewhere)."""
    import datasets
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def main(script_args, training_args, model_args) -> Path:
    """Train, save the adapter/processor/run records, and return the output folder."""
    import transformers
    from accelerate import PartialState
    from transformers import AutoProcessor
    from trl import get_peft_config, get_quantization_config

    from vlfeedback_kit.training.audit import audit_dataset, check_audit
    from vlfeedback_kit.training.compat import end_training, ignore_ddp_buffers
    from vlfeedback_kit.training.distributed import save_model
    from vlfeedback_kit.training.freeze import language_lora_targets
    from vlfeedback_kit.training.init_adapter import resolve_init
    from vlfeedback_kit.training.outputs import write_outputs
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    set_up_logging(training_args)
    main_process = PartialState().is_main_process
    resume = resume_checkpoint(training_args)
    check_output_dir(training_args, resume)
    check_sources(script_args, model_args)
    transformers.set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)

    dataset, data = load_training_data(script_args)
    train_dataset = dataset[script_args.dataset_train_split]
    check_pair_columns(train_dataset.column_names, script_args)
    eval_dataset = dataset.get(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None

    model = resolve_model(model_args.model_name_or_path, model_args.model_revision)
    init = resolve_init(training_args)  # once: the cache key, the load and the records name the same adapter
    model_init_kwargs = dict(
        revision=model.load,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model.load, trust_remote_code=training_args.trust_remote_code
    )
    if model_args.use_peft and model_args.lora_target_modules is None:
        model_args.lora_target_modules = language_lora_targets()

    audit = None
    if training_args.audit:
        audit = audit_dataset(train_dataset, processor, training_args.max_length)
        if main_process:
            print(audit.summary())
        check_audit(audit, training_args.audit_allow_response_truncation)

    trainer = SilkieDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        ref_cache=reference_cache(script_args, training_args, model_args, processor, data, model, init),
        init_adapter=init,
        lengths=audit.lengths(training_args.share_prompt_prefix) if audit is not None else None,
    )
    if script_args.ignore_bias_buffers:
        import torch

        bias_buffers = [name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool]
        ignore_ddp_buffers(trainer.model, bias_buffers)
    if model_args.use_peft and model_args.lora_dropout and training_args.disable_dropout and main_process:
        logger.warning(
            "lora_dropout=%s has no effect: TRL's disable_dropout (default true) sets every dropout to 0, LoRA's "
            "included; set disable_dropout: false to train with it",
            model_args.lora_dropout,
        )
    result = trainer.train(resume_from_checkpoint=resume)

    save_model(trainer, str(output_dir))  # a whole adapter, also from sharded (FSDP) training
    if trainer.accelerator.is_main_process:
        write_outputs(trainer, processor, result, script_args, training_args, model_args, data, model, audit)
        print(
            f"Silkie run in {output_dir}: train loss {result.metrics.get('train_loss', float('nan')):.4f}; adapter, "
            "README.md (model card), training_curves.png, run_info.json. Publish it with: vlfeedback publish model "
            f"{output_dir} --repo ORG/NAME --version 0.1.0"
        )
    trainer.accelerator.wait_for_everyone()
    end_training(trainer)  # finish the trackers and destroy the process group, as TRL's script does
    return output_dir


if __name__ == "__main__":
    try:
        main(*parse_arguments())
    except UserError as err:
        print(f"training/dpo.py: error: {err}", file=sys.stderr)
        sys.exit(2)
