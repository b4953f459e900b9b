"""training/compat.py: every TRL / transformers / PEFT / accelerate / torch internal the kit's speedups rely on is
found on the installed versions, and a missing or changed one stops the feature that needs it with one line naming the
library, the internal and the feature, where the kit used to train on without the speedup (or with wrong positions)."""

import importlib
import re
from pathlib import Path

import pytest
from support.dpo import cpu_dpo_config

from vlfeedback_kit.training import compat
from vlfeedback_kit.training.compat import CHECKED, INTERNALS, CompatError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2-VL (M-RoPE, the family with the most internals in play), its processor and 4 synthetic pairs."""
    from transformers import AutoProcessor

    from vlfeedback_kit.training.bench import synthetic_pairs
    from vlfeedback_kit.training.tiny_model import build_tiny_model

    model_dir = build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("compat") / "model")
    return model_dir, AutoProcessor.from_pretrained(model_dir), synthetic_pairs(4)


def make_trainer(tiny, tmp_path: Path, cache: bool = True, dataset=None, **overrides):
    """The kit's trainer on the tiny model with a LoRA adapter (and a reference cache unless ``cache`` is false)."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.training.freeze import language_lora_targets
    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir, processor, pairs = tiny
    return SilkieDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        args=cpu_dpo_config(tmp_path / "run", seed=0, **overrides),
        train_dataset=pairs if dataset is None else dataset,
        processing_class=processor,
        peft_config=LoraConfig(r=4, target_modules=language_lora_targets()),
        ref_cache=RefLogpCache(tmp_path / "ref.parquet", {}) if cache else None,
    )


def assert_names(error: pytest.ExceptionInfo, library: str, internal: str, feature: str) -> None:
    """One line naming the library (installed and checked versions), the internal and the feature to turn off."""
    message = str(error.value)
    assert "\n" not in message
    assert internal in message and f"{feature} needs {library} " in message, message
    assert f"{library} {compat.installed(library)}" in message and f"{library}=={CHECKED[library]}" in message


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.library}-{i.attribute}")
def test_each_internal_is_found_and_a_missing_one_is_named(internal, monkeypatch):
    internal.check()  # there on the installed versions
    module, _, name = internal.owner.partition(":")
    owner = getattr(importlib.import_module(module), name) if name else importlib.import_module(module)
    if internal.attribute in getattr(owner, "__dataclass_fields__", {}) and not hasattr(owner, internal.attribute):
        monkeypatch.delitem(owner.__dataclass_fields__, internal.attribute)  # a dataclass field without a default
    else:
        monkeypatch.setattr(owner, internal.attribute, None)  # gone (a lazy module would import it again on delattr)
    with pytest.raises(CompatError) as error:
        compat.check_installed()
    assert_names(error, internal.library, f"{internal.owner}.{internal.attribute}", internal.feature)


def test_each_accessor_finds_its_internal_on_a_tiny_trainer(tiny, tmp_path):
    trainer = make_trainer(tiny, tmp_path, share_prompt_prefix=True)
    _, processor, _ = tiny
    compat.check_installed()
    compat.dpo_loss_methods("ref_cache")
    compat.trainer_columns_hooks("ref_cache")
    compat.check_reference_switch(trainer)
    with compat.reference_from_inputs(trainer):
        assert trainer.precompute_ref_logps is True
    assert trainer.precompute_ref_logps is False
    assert compat.is_vision_dataset(trainer, "share_image_features") is True
    trainer._set_signature_columns_if_needed()
    assert "pair_key" in compat.signature_columns(trainer)
    inner = compat.inner_vlm(trainer.model)
    assert type(inner).__name__ == "Qwen2VLModel"
    assert compat.image_token_id(inner.config) == processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert compat.attn_implementation(inner.config) == "sdpa"
    assert compat.rope_index(inner) is not None
    assert compat.autocast_active(trainer.accelerator) is False  # fp32 on the CPU
    assert compat.lora_dropout_rates(trainer.model) and set(compat.lora_dropout_rates(trainer.model)) == {0.0}
    assert set(compat.lora_ranks(trainer.model)) == {4}
    assert callable(compat.checkpointing_enable(trainer.model.get_base_model()))
    assert callable(compat.selective_checkpointing())
    assert trainer.image_sharing and trainer.image_sharing[0].image_token == compat.image_token_id(inner.config)


def test_image_sharing_stops_when_trls_collator_no_longer_repeats_the_halves(tiny, tmp_path, monkeypatch):
    """TRL builds each row's images and prompt once for chosen and rejected (``[...] * 2``); were it to build them
    apart, the kit used to process and encode every image twice again, silently. Now the first batch stops it."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    real_call = DataCollatorForVisionPreference.torch_call

    class Apart:
        """The collator's processor, given a fresh list of images for each row of the rejected half."""

        def __init__(self, processor) -> None:
            self.processor = processor

        def __getattr__(self, name):
            return getattr(self.processor, name)

        def __call__(self, images=None, text=None, **kwargs):
            images = [list(row) for row in images] if images is not None else None
            return self.processor(images=images, text=text, **kwargs)

    def halves_built_apart(self, examples):
        shared = self.processor
        self.processor = Apart(shared)
        try:
            return real_call(self, examples)
        finally:
            self.processor = shared

    monkeypatch.setattr(DataCollatorForVisionPreference, "torch_call", halves_built_apart)
    trainer = make_trainer(tiny, tmp_path, cache=False)
    assert trainer.image_sharing  # on, as configured
    with pytest.raises(CompatError) as error:
        trainer.train()
    assert_names(error, "trl", "DataCollatorForVisionPreference.torch_call layout", "share_image_features")


def test_prefix_sharing_refuses_an_m_rope_model_without_get_rope_index(tiny, tmp_path, monkeypatch):
    """Without Qwen's ``get_rope_index`` the packed rows used to get 1-D positions: other numbers, no error."""
    from transformers import Qwen2VLModel

    monkeypatch.delattr(Qwen2VLModel, "get_rope_index")
    with pytest.raises(CompatError) as error:
        make_trainer(tiny, tmp_path, share_prompt_prefix=True)
    assert_names(error, "transformers", "Qwen2VLModel.get_rope_index(", "share_prompt_prefix")


def test_prefix_sharing_refuses_a_config_without_attn_implementation(tiny, tmp_path, monkeypatch):
    from transformers import PreTrainedConfig

    owner = next(c for c in PreTrainedConfig.__mro__ if "_attn_implementation" in vars(c))
    monkeypatch.delattr(owner, "_attn_implementation")
    trainer = None
    with pytest.raises(CompatError) as error:
        trainer = make_trainer(tiny, tmp_path, share_prompt_prefix=True)
    assert trainer is None
    assert_names(error, "transformers", "PreTrainedConfig._attn_implementation", "share_prompt_prefix")


def test_share_prompt_prefix_without_images_is_refused(tiny, tmp_path):
    """On rows without images the kit used to leave the model unwrapped, quietly training without the packing."""

    def text_only(prompt: list) -> list:
        return [{**turn, "content": [part for part in turn["content"] if part["type"] == "text"]} for turn in prompt]

    pairs = tiny[2].remove_columns([c for c in ("image", "images") if c in tiny[2].column_names])
    pairs = pairs.map(lambda row: {"prompt": text_only(row["prompt"])})
    with pytest.raises(ValueError, match="no image or images column; set share_prompt_prefix false"):
        make_trainer(tiny, tmp_path, cache=False, dataset=pairs, share_prompt_prefix=True)


def test_share_lora_inputs_needs_accelerates_native_amp(tiny, tmp_path, monkeypatch):
    """``getattr(accelerator, "native_amp", False)`` used to turn LoRA input sharing off without a word."""
    from accelerate import Accelerator

    real_init = Accelerator.__init__

    def without_native_amp(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        del self.native_amp

    monkeypatch.setattr(Accelerator, "__init__", without_native_amp)
    with pytest.raises(CompatError) as error:
        make_trainer(tiny, tmp_path)
    assert_names(error, "accelerate", "Accelerator.native_amp", "share_lora_inputs")


def test_reference_cache_stops_when_pair_keys_no_longer_reach_the_batch(tiny, tmp_path, monkeypatch):
    """Were transformers to drop the ``pair_key`` column the kit adds to the signature columns, every step used to
    run a live reference forward with the cache never read or filled."""
    from transformers import Trainer

    def keeps_trls_columns_only(self, dataset, description=None):
        keep = ("prompt", "chosen", "rejected", "image", "images")
        return dataset.remove_columns([c for c in dataset.column_names if c not in keep])

    monkeypatch.setattr(Trainer, "_remove_unused_columns", keeps_trls_columns_only)
    trainer = make_trainer(tiny, tmp_path, ref_precompute=False)
    with pytest.raises(CompatError) as error:
        trainer.train()
    assert_names(error, "transformers", "Trainer._remove_unused_columns", "ref_cache")
    assert re.search(r"pair_key column did not reach the batch", str(error.value))


def peft_model(tiny):
    """The tiny model with a rank-4 LoRA adapter on its language model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.training.freeze import language_lora_targets

    base = AutoModelForImageTextToText.from_pretrained(tiny[0])
    return get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules=language_lora_targets()))


def test_lora_levers_need_pefts_per_layer_rank_and_dropout(tiny):
    """PEFT's ``r`` / ``lora_dropout`` gone used to read as rank 0 and no dropout: save_matmuls then saved LoRA's
    up-projections, and share_lora_inputs ran with dropout (no longer exact), both without a word."""
    from peft.tuners.lora import LoraLayer

    from vlfeedback_kit.training.activations import lora_dropout_active, lora_rank

    model = peft_model(tiny)
    assert lora_rank(model) == 4 and lora_dropout_active(model)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    del layer.r
    with pytest.raises(CompatError) as error:
        lora_rank(model)
    assert_names(error, "peft", "LoraLayer.r", "checkpoint_policy")
    del layer.lora_dropout
    with pytest.raises(CompatError) as error:
        lora_dropout_active(model)
    assert_names(error, "peft", "LoraLayer.lora_dropout", "share_lora_inputs")


def test_full_checkpoint_layers_need_the_layers_checkpointing_attributes(tiny, monkeypatch):
    """Without ``GradientCheckpointingLayer.gradient_checkpointing`` the kit used to find no checkpointed layer, so
    ``full_checkpoint_layers`` applied to none; a layer without ``_gradient_checkpointing_func`` is refused too."""
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.modeling_layers import GradientCheckpointingLayer

    from vlfeedback_kit.training.activations import checkpointed_language_layers

    model = AutoModelForImageTextToText.from_pretrained(tiny[0])
    assert checkpointed_language_layers(model) == []  # checkpointing is off
    with pytest.raises(CompatError) as error:
        compat.set_checkpoint_function(torch.nn.Linear(1, 1), torch.utils.checkpoint.checkpoint)
    assert_names(
        error, "transformers", "GradientCheckpointingLayer._gradient_checkpointing_func", "full_checkpoint_layers"
    )
    monkeypatch.delattr(GradientCheckpointingLayer, "gradient_checkpointing")
    with pytest.raises(CompatError) as error:
        checkpointed_language_layers(model)
    assert_names(error, "transformers", "GradientCheckpointingLayer.gradient_checkpointing", "full_checkpoint_layers")


def test_save_matmuls_names_an_aten_op_this_torch_lacks(monkeypatch):
    """A renamed attention kernel used to drop out of the saved set, so save_matmuls recomputed attention quietly."""
    from vlfeedback_kit.training import activations

    assert activations.save_matmuls_policy(4) is not None
    monkeypatch.setattr(activations, "ATTENTION_OPS", (*activations.ATTENTION_OPS, "_no_such_attention"))
    with pytest.raises(CompatError) as error:
        activations.save_matmuls_policy(4)
    assert_names(error, "torch", "torch.ops.aten._no_such_attention", "checkpoint_policy")


def test_the_benchmarks_internals_are_read_through_compat(tiny, tmp_path):
    """training.bench and training.memory read Trainer internals only through compat: there they work, and a missing
    one is a CompatError naming the way out (never an AttributeError mid-benchmark)."""
    trainer = make_trainer(tiny, tmp_path)
    assert compat.trained_tokens(trainer) == 0  # nothing trained yet
    batch = compat.prepare_inputs(trainer, next(iter(trainer.get_train_dataloader())))
    assert batch["input_ids"].device.type == "cpu"
    del trainer._total_train_tokens
    with pytest.raises(CompatError, match="bench tokens per step"):
        compat.trained_tokens(trainer)
    with pytest.raises(CompatError, match="use --shape tiny"):
        compat.model_from_config(type("NoFactory", (), {}), None)
