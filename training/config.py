"""Configuration dataclasses of the Silkie DPO script: TRL's own, extended rather than re-declared."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig, ScriptArguments

REFERENCE_POLICIES = ("base", "init")
"""What ``reference_policy`` may name: the base model, or the policy ``init_adapter`` starts from."""


@dataclass
class SilkieScriptArguments(ScriptArguments):
    """TRL's ``ScriptArguments`` plus the dataset revision (a tag or commit) recorded in every output.

    Defaults that differ from TRL's: ``dataset_config="pairs"`` (the paper's pairing rule).
    """

    dataset_config: str | None = field(
        default="pairs", metadata={"help": "Pairing config of a VLFeedback dataset (raw is not trainable)."}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Dataset revision (tag such as v1.0.0, branch or commit) to train on."}
    )
    pairs_from_raw: bool = field(
        default=False,
        metadata={
            "help": "Build the pairing config's rows from `raw` at load time (vlfeedback_kit.builders.load_pairs), "
            "each image stored once in the local cache (1.22x raw's cache instead of 4.2x for loading `pairs` "
            "directly); same rows, columns and features."
        },
    )
    recipe_name: str | None = field(default=None, metadata={"help": "Name of the recipe, recorded in run_info."})
    hardware: str | None = field(
        default=None, metadata={"help": "The hardware the recipe assumes (e.g. '8x H100 80GB'), recorded in run_info."}
    )


@dataclass
class SilkieDPOConfig(DPOConfig):
    """TRL's ``DPOConfig`` plus the kit's VLM extensions.

    Reference cache: reference log-probs are computed once — ``ref_precompute`` runs one gradient-free pass with
    ``ref_batch_size`` before training — and stored under ``ref_cache_dir`` (default: beside a local dataset, else
    under ``$HF_HOME/vlfeedback``), keyed by the exact data and weights and how the reference is computed. Before the
    first step trained on cached values, that batch is recomputed live; a difference above ``ref_cache_tolerance``
    stops the run.

    Image sharing: ``share_image_features`` encodes each image once per step for chosen, rejected and reference;
    ``share_prompt_prefix`` packs chosen and rejected behind one copy of the prompt (``prefix_sharing``).

    Activation memory (``activations``): ``share_lora_inputs`` drops PEFT's redundant per-layer input
    copies under autocast; ``checkpoint_policy`` chooses what activation checkpointing keeps.

    Guards: ``freeze_vision`` freezes the vision tower and projector (LoRA never targets them); ``audit`` checks every
    row against ``max_length`` with the real processor before training.

    Starting point (:mod:`.init_adapter`): ``init_adapter`` trains an existing LoRA adapter further (a run dir of
    ``vlfeedback train``, an adapter folder, or a Hub id at ``init_adapter_revision``); ``reference_policy`` is the
    DPO reference: ``base`` (the base model, adapters disabled) or ``init`` (the starting adapter, frozen).

    Outputs: a non-empty ``output_dir`` is refused unless resuming or ``overwrite_output_dir``; ``merge`` also saves
    merged weights; ``plot`` writes the loss / reward curves PNG.
    """

    ref_cache: bool = field(default=True, metadata={"help": "Cache reference log-probs across epochs and runs."})
    ref_precompute: bool = field(
        default=True, metadata={"help": "Fill the reference cache in one batched pass before training."}
    )
    ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the reference pass (default: 2x per_device_train_batch_size)."}
    )
    ref_cache_dir: str | None = field(default=None, metadata={"help": "Where reference caches are stored."})
    ref_cache_tolerance: float | None = field(
        default=None,
        metadata={
            "help": "Largest |cached - live| reference log-prob (nats) the step-0 self-check accepts (default per "
            "compute dtype: float32 0.01, float16 0.1, bfloat16 0.25)."
        },
    )
    share_image_features: bool = field(
        default=True, metadata={"help": "Encode each image once per step (chosen, rejected and reference)."}
    )
    share_prompt_prefix: bool = field(
        default=False,
        metadata={
            "help": "Run chosen and rejected as one packed sequence so the prompt is computed once "
            "(experimental: exact on CPU, not yet measured on GPU)."
        },
    )
    share_lora_inputs: bool = field(
        default=True,
        metadata={
            "help": "Under bf16/fp16 autocast and without LoRA dropout, let LoRA layers use their input as is "
            "instead of an fp32 copy that autocast casts back (same numbers; one saved activation per input instead "
            "of one per LoRA layer)."
        },
    )
    checkpoint_policy: str = field(
        default="full",
        metadata={
            "help": "What activation checkpointing keeps: full (each layer's input, recompute everything), "
            "save_attention (TRL's selective policy), save_matmuls (keep matrix-product and attention outputs, "
            "recompute element-wise ops and LoRA up-projections). Combine with "
            "activation_checkpointing_kwargs={'every_n_layers': n}.",
            "choices": ["full", "save_attention", "save_matmuls"],
        },
    )
    full_checkpoint_layers: int = field(
        default=0,
        metadata={
            "help": "With checkpoint_policy save_matmuls: this many language-model layers (spread evenly) use full "
            "checkpointing instead, for a memory budget between the two policies."
        },
    )
    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower and the projector."})
    audit: bool = field(default=True, metadata={"help": "Refuse rows that max_length would truncate."})
    audit_allow_response_truncation: bool = field(
        default=False, metadata={"help": "Accept rows whose answers max_length cuts (image tokens are never cut)."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Start from this LoRA adapter and train it further: a run dir of `vlfeedback train`, a PEFT "
            "adapter folder, or a Hub id ORG/NAME (its LoRA settings must equal the recipe's)."
        },
    )
    init_adapter_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (tag, branch or commit) of a Hub init_adapter."}
    )
    reference_policy: str = field(
        default="base",
        metadata={
            "help": "The DPO reference: base (the base model, adapters disabled) or init (the policy init_adapter "
            "starts from, frozen); it keys the reference cache.",
            "choices": ["base", "init"],
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that already holds a run, writing over it (default: refuse)."},
    )
    merge: bool = field(default=False, metadata={"help": "Also save the LoRA adapter merged into the base weights."})
    plot: bool = field(default=True, metadata={"help": "Write training_curves.png (loss, reward accuracy, margin)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precompute_ref_log_probs:
            raise ValueError(
                "`precompute_ref_log_probs` is TRL's text-only cache; for VLMs use the kit's `ref_cache` (on by "
                "default) and leave `precompute_ref_log_probs` false"
            )
        from vlfeedback_kit.training.activations import CHECKPOINT_POLICIES

        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(
                f"checkpoint_policy must be one of {', '.join(CHECKPOINT_POLICIES)}, not {self.checkpoint_policy!r}"
            )
        if self.reference_policy not in REFERENCE_POLICIES:
            raise ValueError(
                f"reference_policy must be one of {', '.join(REFERENCE_POLICIES)}, not {self.reference_policy!r}"
            )
        if self.reference_policy == "init" and not self.init_adapter:
            raise ValueError(
                "reference_policy init is the policy --init_adapter starts from, and no --init_adapter is given; "
                "pass --init_adapter RUN_DIR_OR_ORG/NAME, or use --reference_policy base"
            )
        if self.init_adapter_revision and not self.init_adapter:
            raise ValueError(
                "--init_adapter_revision is the revision of a Hub --init_adapter; pass --init_adapter too"
            )
        if self.ref_precompute and not self.ref_cache:
            self.ref_precompute = False
