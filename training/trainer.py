"""``SilkieDPOTrainer``: TRL's ``DPOTrainer`` with its loss untouched and the VLM-specific waste removed.

- Reference log-probs come from a :class:`~.ref_cache.RefLogpCache`: one batched, gradient-free pass before
  training (``ref_precompute``), or filled the first time a pair is seen; reused across epochs and runs. The first
  batch served from the cache is also computed live and compared (a self-check that stops a wrong cache).
- ``freeze_vision`` freezes the vision tower and projector of the model the trainer holds (loaded by TRL from
  ``model_init_kwargs`` or passed in) and refuses LoRA adapters on them.
- Each image is processed and encoded once per step, for chosen and rejected and for the reference pass
  (:mod:`vlfeedback_kit.training.shared_images`).
- Less activation memory, exactly the same numbers (:mod:`.activations`): no per-LoRA-layer input copies
  under autocast, and an optional selective checkpointing policy that keeps matrix-product outputs.
- Everything else — the loss types, metrics, PEFT reference via disabled adapters, logging — is TRL's own code path:
  the cached values enter through TRL's ``ref_chosen_logps`` / ``ref_rejected_logps`` inputs.

Every TRL / transformers / PEFT / accelerate internal this relies on goes through :mod:`.compat`, which refuses a
changed one at construction (or at the first batch) instead of training without the speedup.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from transformers import TrainerCallback
from trl import DPOTrainer

from vlfeedback_kit.training import compat
from vlfeedback_kit.training.activations import LoraInputSharing, enable_checkpoint_policy, lora_dropout_active
from vlfeedback_kit.training.distributed import lora_input_sharing_allowed, settle_launch, shards_parameters
from vlfeedback_kit.training.families import check_speedups, enabled_speedups, family_of
from vlfeedback_kit.training.freeze import assert_no_vision_lora, freeze_vision
from vlfeedback_kit.training.init_adapter import starting_policy
from vlfeedback_kit.training.prefix_sharing import PrefixSharing
from vlfeedback_kit.training.ref_cache import TOLERANCE, ReferenceCacheMismatch, RefLogpCache, pair_key
from vlfeedback_kit.training.resolve import Source
from vlfeedback_kit.training.shared_images import ImageFeatureSharing, ImageOnceProcessor

logger = logging.getLogger(__name__)
PAIR_KEY = "pair_key"


def add_pair_keys(dataset):
    """The dataset with a ``pair_key`` column: from id and models when present, else from the texts and the image
    bytes (read undecoded), so two pairs with the same texts on different images never share a cached value."""
    if dataset is None or PAIR_KEY in dataset.column_names:
        return dataset
    light = [c for c in ("id", "chosen_model", "rejected_model") if c in dataset.column_names]
    if len(light) == 3:
        source, columns = dataset, light
    else:
        from datasets import Image, List

        image_column = "images" if "images" in dataset.column_names else "image"
        undecoded = List(Image(decode=False)) if image_column == "images" else Image(decode=False)
        source = dataset.cast_column(image_column, undecoded) if image_column in dataset.column_names else dataset
        columns = ["prompt", "chosen", "rejected"] + ([image_column] if image_column in dataset.column_names else [])

    def keys(*values):
        return {PAIR_KEY: [pair_key(dict(zip(columns, row))) for row in zip(*values)]}

    computed = source.map(keys, input_columns=columns, batched=True, desc="pair keys", remove_columns=[])
    return dataset.add_column(PAIR_KEY, computed[PAIR_KEY]) if source is not dataset else computed


class KitCollator:
    """Wraps TRL's collator: hands each example's ``pair_key`` to the trainer with the batch, and drops the
    ``length`` column that only the length-grouped sampler reads."""

    def __init__(self, collator: Any, length_column: str | None = None) -> None:
        self.collator = collator
        self.length_column = length_column

    def __call__(self, examples: list[dict]) -> dict:
        keys = [example.pop(PAIR_KEY) for example in examples if PAIR_KEY in example]
        for example in examples:
            example.pop(self.length_column, None)
        batch = self.collator(examples)
        if keys:
            batch["pair_keys"] = keys
        return batch


def add_lengths(dataset, processor, column: str, packed: bool, lengths: list[int] | None = None):
    """The dataset with a ``column`` of per-row token lengths for ``train_sampling_strategy: group_by_length``:
    given (from the pre-flight audit), or counted with the real processor (``vlfeedback_kit.training.audit``)."""
    if dataset is None or column in dataset.column_names:
        return dataset
    if lengths is None:
        if processor is None:
            raise ValueError(
                "train_sampling_strategy group_by_length needs per-row lengths: pass processing_class or add a "
                f"{column!r} column to the dataset"
            )
        from vlfeedback_kit.training.audit import audit_dataset

        lengths = audit_dataset(dataset, processor, None).lengths(packed)
    return dataset.add_column(column, lengths)


class _ShareCacheEachEpoch(TrainerCallback):
    """Merge the ranks' cache entries at each epoch end, so a pair cached on one rank is a hit on all of them."""

    def __init__(self, trainer: SilkieDPOTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._gather_cache()


class SilkieDPOTrainer(DPOTrainer):
    """DPO for VLMs with a persistent reference log-prob cache and one vision encode per image per step."""

    def __init__(
        self,
        *args: Any,
        ref_cache: RefLogpCache | None = None,
        lengths: list[int] | None = None,
        init_adapter: Source | None = None,
        **kwargs: Any,
    ) -> None:
        """``ref_cache``: where reference log-probs live (None: TRL's live reference forward). ``lengths``: per-row
        token lengths of the training set for ``group_by_length`` (e.g. from the pre-flight audit). ``init_adapter``:
        ``args.init_adapter`` already resolved (:mod:`.init_adapter`; resolved here when not given)."""
        kwargs = inspect.signature(DPOTrainer.__init__).bind(self, *args, **kwargs).arguments
        kwargs.pop("self")
        self.init_adapter = starting_policy(kwargs, init_adapter)
        for name in ("train_dataset", "eval_dataset"):
            if kwargs.get(name) is not None and ref_cache is not None:
                kwargs[name] = add_pair_keys(kwargs[name])
        config = kwargs.get("args")
        self._grouped = getattr(config, "train_sampling_strategy", None) == "group_by_length"
        if self._grouped:
            kwargs["train_dataset"] = add_lengths(
                kwargs.get("train_dataset"),
                kwargs.get("processing_class"),
                config.length_column_name,
                getattr(config, "share_prompt_prefix", False),
                lengths,
            )
        super().__init__(**kwargs)
        if hasattr(self.model, "peft_config"):  # the reference: the base, or init_adapter's frozen copy
            compat.check_reference_adapter(self.model, getattr(self.args, "reference_policy", "base") == "init")
        if getattr(self.args, "freeze_vision", False):
            freeze_vision(self.model)
            assert_no_vision_lora(self.model)
        speedups = [name for name in enabled_speedups(self.args) if name != "ref_cache" or ref_cache is not None]
        check_speedups(family_of(self.model), speedups)  # a refused speedup is an error, never a silent no-op
        self._check_internals(ref_cache is not None)
        self.ref_cache = ref_cache
        self.reference_forwards = 0
        self.ref_cache_check: dict | None = None  # the step-0 self-check's measurement, once it has run
        self.image_sharing: list[ImageFeatureSharing] = []
        if getattr(self.args, "share_image_features", True) and compat.is_vision_dataset(self, "share_image_features"):
            compat.wrap_collator_processor(self.data_collator, ImageOnceProcessor)
            self.image_sharing = [ImageFeatureSharing(m) for m in (self.model, self.ref_model) if m is not None]
        self._reduce_activation_memory()
        if ref_cache is not None or self._grouped:
            length_column = self.args.length_column_name if self._grouped else None
            self.data_collator = KitCollator(self.data_collator, length_column)
        if ref_cache is not None:
            self.add_callback(_ShareCacheEachEpoch(self))

    def create_accelerator_and_postprocess(self) -> None:
        """transformers' accelerator, made FSDP2 on CPUs when the launch asks for FSDP2 (:mod:`.distributed`)."""
        super().create_accelerator_and_postprocess()
        settle_launch(self)

    def _check_internals(self, cached: bool) -> None:
        """Refuse, before any step, a TRL / transformers version whose internals an enabled speedup needs and lacks
        (:mod:`.compat`), and prompt-prefix sharing where it would do nothing (rows without images)."""
        prefix = getattr(self.args, "share_prompt_prefix", False)
        if cached or prefix:
            compat.dpo_loss_methods("ref_cache" if cached else "share_prompt_prefix")
        if cached:
            compat.check_reference_switch(self)
        if cached or self._grouped:
            compat.trainer_columns_hooks("ref_cache" if cached else "train_sampling_strategy")
        if prefix:
            if not compat.is_vision_dataset(self, "share_prompt_prefix"):
                raise ValueError(
                    "share_prompt_prefix packs pairs that share one image, and this dataset has no image or images "
                    "column; set share_prompt_prefix false"
                )
            self._packed(self.model)  # the wrapper's own checks (attention kernel, M-RoPE) now, not at step 1

    def _reduce_activation_memory(self) -> None:
        """Apply ``share_lora_inputs`` (under autocast, without LoRA dropout) and the ``checkpoint_policy``
        (vlfeedback_kit.training.activations)."""
        self._share_inputs = (
            getattr(self.args, "share_lora_inputs", True)
            and compat.autocast_active(self.accelerator)  # the forward runs under torch autocast
            and not lora_dropout_active(self.model)
            and lora_input_sharing_allowed(self)  # off, with the reason, under DeepSpeed / FSDP
        )
        self._lora_inputs = LoraInputSharing(self.model)
        if self._share_inputs:
            self._lora_inputs.on()
        policy = getattr(self.args, "checkpoint_policy", "full")
        plugin = self.args.deepspeed_plugin
        if policy != "full" and plugin is not None and plugin.zero_stage == 3 and self.args.activation_checkpointing:
            raise ValueError(
                f"checkpoint_policy {policy} needs non-reentrant checkpointing, which TRL replaces with reentrant "
                "checkpointing for LoRA under ZeRO-3 (and the kit has not run it there); use checkpoint_policy full "
                "with zero3, or the zero2 / multi_gpu accelerate configs"
            )
        enable_checkpoint_policy(
            self.model,
            policy,
            getattr(self.args, "full_checkpoint_layers", 0),
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """TRL's save of the trained adapter, without the frozen reference copy of ``reference_policy init``."""
        with compat.trained_adapter_only(self.model):
            super()._save(output_dir, state_dict)

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation in order: transformers would length-group it too, from a column only the train set has."""
        if self._grouped and eval_dataset is not None:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = compat.signature_columns(self)
        if self.ref_cache is not None and PAIR_KEY not in columns:
            columns.append(PAIR_KEY)
        if self._grouped and self.args.length_column_name not in columns:
            columns.append(self.args.length_column_name)

    def train(self, *args: Any, **kwargs: Any):
        """Fill the reference cache in one batched pass (when enabled), then train as TRL does."""
        if self.ref_cache is not None and getattr(self.args, "ref_precompute", True) and self._covers_dataset():
            self.precompute_reference()
        if self._share_inputs:
            self._lora_inputs.on()
        try:
            result = super().train(*args, **kwargs)
        except ReferenceCacheMismatch:
            raise
        except BaseException:
            if self.ref_cache is not None and self.accelerator.is_main_process:
                self.ref_cache.save()  # keep what this process computed for the next run
            raise
        finally:
            self._lora_inputs.off()  # forwards outside the trainer's autocast need PEFT's cast back
        if self.ref_cache is not None:
            self._gather_cache()  # entries filled lazily by other ranks
            if self.accelerator.is_main_process:
                self.ref_cache.save()
        return result

    def _covers_dataset(self) -> bool:
        """Whether the run visits every training pair (else the cache fills lazily, only for visited pairs)."""
        if self.args.max_steps is None or self.args.max_steps <= 0:
            return True
        world = self.accelerator.num_processes
        seen = self.args.max_steps * self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return seen * world >= len(self.train_dataset)

    @torch.no_grad()
    def precompute_reference(self) -> int:
        """Reference log-probs of every uncached training pair, batched and without gradients; returns the count."""
        from huggingface_hub.utils import tqdm
        from torch.utils.data import DataLoader

        if shards_parameters(self):  # ZeRO-3, FSDP; ZeRO-2 keeps whole parameters on every rank
            logger.warning("reference cache: sharded model, filling the cache during the first epoch instead")
            return 0
        if self.is_deepspeed_enabled:  # ZeRO-1/2: transformers leaves placing the model to DeepSpeed's engine
            self.model.to(self.accelerator.device)
        keys = self.train_dataset[PAIR_KEY]
        missing = [i for i, key in enumerate(keys) if key not in self.ref_cache.values]
        if not missing:
            return 0
        column = self.args.length_column_name
        if column in self.train_dataset.column_names:  # longest first: little padding, and any OOM comes at once
            lengths = self.train_dataset[column]
            missing.sort(key=lambda i: -lengths[i])
        subset = self.train_dataset.select(missing)
        if self.accelerator.num_processes > 1:
            # strided after the longest-first sort, so every rank gets an even share of long rows
            subset = subset.shard(self.accelerator.num_processes, self.accelerator.process_index, contiguous=False)
        subset = compat.remove_unused_columns(self, subset, "reference pass")
        batch_size = getattr(self.args, "ref_batch_size", None) or 2 * self.args.per_device_train_batch_size
        loader = DataLoader(
            subset,
            batch_size=batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
        )
        self.model.eval()
        for batch in tqdm(loader, desc="reference log-probs", disable=not self.accelerator.is_local_main_process):
            if "pair_keys" not in batch:
                raise compat.pair_keys_lost()
            batch_keys = batch.pop("pair_keys")
            reference = self._packed(self._reference(self.model))
            chosen, rejected = self.compute_ref_log_probs(reference, compat.prepare_inputs(self, batch))
            self.reference_forwards += 1
            self.ref_cache.add(batch_keys, chosen.float().tolist(), rejected.float().tolist())
        self.model.train()
        self._gather_cache()
        return len(missing)

    def _reference(self, model):
        """The model computing reference log-probs: a separate reference, or the policy (TRL disables its adapter)."""
        return self.ref_model if self.ref_model is not None else model

    def _gather_cache(self) -> None:
        """Share every process's new cache entries with all processes (each entry crosses once)."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        self.ref_cache.merge(gather_object([self.ref_cache.take_unshared()]))  # only what is new since the last merge

    def compute_dtype(self) -> str:
        """The precision the reference forward runs in: the autocast dtype, else the model's weights."""
        if self.args.bf16:
            return "bfloat16"
        if self.args.fp16:
            return "float16"
        weights = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        return str(weights).removeprefix("torch.")

    def _check_cached_reference(self, model, inputs: dict, keys: list[str], chosen, rejected) -> None:
        """The step-0 self-check: the first batch served from the cache is computed live too; a difference above the
        dtype's tolerance (``ref_cache_tolerance``, else ``ref_cache.TOLERANCE``) stops the run, naming the rows."""
        live_chosen, live_rejected = self.compute_ref_log_probs(self._packed(self._reference(model)), inputs)
        rows = torch.maximum((live_chosen - chosen).float().abs(), (live_rejected - rejected).float().abs())
        worst = self.accelerator.gather(rows.max().reshape(1)).max().item()  # every rank stops, or none
        dtype = self.compute_dtype()
        tolerance = getattr(self.args, "ref_cache_tolerance", None) or TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
        self.ref_cache_check = {
            "rows": len(keys),
            "max_abs_diff": worst,
            "tolerance": tolerance,
            "dtype": dtype,
        }
        logger.info("reference cache self-check: max |cached - live| = %.3g nats (tolerance %g)", worst, tolerance)
        if worst <= tolerance:
            return
        bad = [key for key, diff in zip(keys, rows.tolist()) if diff > tolerance]
        raise ReferenceCacheMismatch(
            f"reference cache self-check failed: cached reference log-probs differ from a live forward by up to "
            f"{worst:.4g} nats (tolerance {tolerance:g} for {dtype}) on {self._describe_rows(bad) or 'another rank'}; "
            f"the cache {self.ref_cache.path} was computed for other data, weights or settings: delete it, or train "
            "with ref_cache: false (--ref_cache false)"
        )

    def _describe_rows(self, keys: list[str]) -> str:
        """``row N (id X)`` of the training set for each pair key, as a user finds them in the data."""
        if not keys:
            return ""
        column = self.train_dataset[PAIR_KEY]
        ids = self.train_dataset["id"] if "id" in self.train_dataset.column_names else None
        described = []
        for key in keys:
            row = column.index(key) if key in column else None
            described.append(f"row {row}" + (f" (id {ids[row]})" if ids is not None and row is not None else ""))
        return ", ".join(described)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's logs plus the reference cache's running counts."""
        if self.ref_cache is not None and "loss" in logs:
            logs = {
                **logs,
                "ref_cache/hits": self.ref_cache.hits,
                "ref_cache/misses": self.ref_cache.misses,
                "ref_cache/reference_forwards": self.reference_forwards,
            }
        super().log(logs, start_time)

    def _packed(self, model):
        """``model`` itself, or its prompt-prefix-sharing stand-in when ``share_prompt_prefix`` is on."""
        if not getattr(self.args, "share_prompt_prefix", False):
            return model
        wrappers = self.__dict__.setdefault("_prefix_wrappers", {})
        if id(model) not in wrappers:
            wrappers[id(model)] = PrefixSharing(model)
        return wrappers[id(model)]

    def _compute_loss(self, model, inputs: dict, return_outputs: bool):
        """TRL's loss on the packed model (prefix sharing), with reference log-probs from the cache when it is on."""
        keys = inputs.pop("pair_keys", None)
        if self.ref_cache is None:
            return super()._compute_loss(self._packed(model), inputs, return_outputs)
        if keys is None:  # a silent live reference forward each step would be the cache switched off
            raise compat.pair_keys_lost()
        cached = self.ref_cache.lookup(keys)
        if self.accelerator.num_processes > 1:
            # decide together: a sharded model (ZeRO-3, FSDP) needs every rank in each reference forward
            missed = torch.tensor([float(cached is None)], device=inputs["input_ids"].device)
            if self.accelerator.reduce(missed, reduction="sum").item() > 0:
                cached = None
        if cached is None:
            chosen, rejected = self.compute_ref_log_probs(self._packed(self._reference(model)), inputs)
            self.reference_forwards += 1
            self.ref_cache.add(keys, chosen.float().tolist(), rejected.float().tolist())
        else:
            device = inputs["input_ids"].device
            chosen, rejected = (torch.tensor(values, device=device) for values in cached)
            if self.ref_cache_check is None:
                self._check_cached_reference(model, inputs, keys, chosen, rejected)
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = chosen, rejected
        with compat.reference_from_inputs(self):
            return super()._compute_loss(self._packed(model), inputs, return_outputs)
