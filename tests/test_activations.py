"""Activation memory (training/activations.py): fewer saved tensors, exactly the same loss and gradients."""

from pathlib import Path

import pytest
import torch
from support.dpo import cpu_dpo_config
from torch.utils._python_dispatch import TorchDispatchMode

from vlfeedback_kit.training.activations import lora_rank
from vlfeedback_kit.training.memory import saved_activations

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor

    from vlfeedback_kit.training.bench import synthetic_pairs
    from vlfeedback_kit.training.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("activations")
    model_dir = build_tiny_model("qwen2_vl", root / "model")
    return model_dir, AutoProcessor.from_pretrained(model_dir), synthetic_pairs(4)


def trainer(tiny, tmp_path: Path, **overrides):
    """A kit trainer on the tiny Qwen2-VL with a non-zero LoRA (so the adapter takes part in every product)."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.training.freeze import language_lora_targets
    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir, processor, dataset = tiny
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=language_lora_targets(), init_lora_weights=False
    )  # TRL's disable_dropout (default) sets the dropout to 0 unless a test turns it off
    run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    return SilkieDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        args=cpu_dpo_config(run, seed=0, **overrides),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora,
        ref_cache=RefLogpCache(run / "ref.parquet", {}),
    )


class CountLargeMatmuls(TorchDispatchMode):
    """Counts matrix products whose smaller inner dimension exceeds ``rank`` (the base projections, not LoRA's)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.count = rank, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            left = args[1] if func is torch.ops.aten.addmm.default else args[0]
            self.count += int(min(left.shape[-2:]) > self.rank)
        return func(*args, **(kwargs or {}))


def one_step(kit) -> tuple[float, dict[str, torch.Tensor], int, int]:
    """Loss, LoRA gradients, bytes saved through autograd hooks, and large matrix products run in the backward."""
    inputs = kit._prepare_inputs(next(iter(kit.get_train_dataloader())))
    kit.model.train()
    kit.model.zero_grad(set_to_none=True)

    def step():
        with kit.compute_loss_context_manager(), kit.accelerator.autocast():
            return kit.compute_loss(kit.model, dict(inputs))

    by_kind, _, _, loss = saved_activations(kit.model, step)
    with CountLargeMatmuls(lora_rank(kit.model)) as counter:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in kit.model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(by_kind.values()), counter.count


def test_share_lora_inputs_is_exact_under_autocast_and_saves_less(tiny, tmp_path):
    stock_loss, stock_grads, stock_saved, _ = one_step(trainer(tiny, tmp_path, bf16=True, share_lora_inputs=False))
    kit = trainer(tiny, tmp_path, bf16=True)
    loss, grads, saved, _ = one_step(kit)
    assert not any(m.cast_input_dtype_enabled for m in kit.model.modules() if hasattr(m, "lora_A"))
    assert loss == stock_loss
    assert grads.keys() == stock_grads.keys() and len(grads) == 28  # 7 projections x A/B x 2 layers
    assert all(torch.equal(grads[name], stock_grads[name]) for name in grads)
    assert saved < stock_saved


def test_share_lora_inputs_stays_off_without_autocast(tiny, tmp_path):
    kit = trainer(tiny, tmp_path)  # fp32: PEFT's cast is what makes mixed dtypes work, so it stays
    assert all(m.cast_input_dtype_enabled for m in kit.model.modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize("prefix", [False, True], ids=["two-rows", "prefix-shared"])
def test_save_matmuls_recomputes_no_large_product_and_keeps_the_gradients(tiny, tmp_path, prefix):
    reference = trainer(tiny, tmp_path, share_prompt_prefix=prefix)
    reference.model.enable_input_require_grads()  # as checkpointing does: the first layer's input grads are computed
    loss, grads, _, large_backward = one_step(reference)
    results = {}
    for policy, full_layers in (("full", 0), ("save_matmuls", 0), ("save_matmuls", 1)):
        kit = trainer(
            tiny,
            tmp_path,
            activation_checkpointing=True,
            checkpoint_policy=policy,
            full_checkpoint_layers=full_layers,
            share_prompt_prefix=prefix,
            max_steps=1,
        )
        kit.train()  # the Trainer enables checkpointing itself; the policy must reach every decoder layer
        layers = [m for m in kit.model.modules() if type(m).__name__ == "Qwen2VLDecoderLayer"]
        assert len(layers) == 2 and all(m.gradient_checkpointing for m in layers)
        selective = ["context_fn" in getattr(m._gradient_checkpointing_func, "keywords", {}) for m in layers]
        assert sum(selective) == (2 - full_layers if policy == "save_matmuls" else 0)
        with torch.no_grad():  # the same weights as the un-checkpointed run: undo the training step
            fresh = trainer(tiny, tmp_path, share_prompt_prefix=prefix)
            for p, q in zip(kit.model.parameters(), fresh.model.parameters()):
                p.copy_(q)
        results[policy, full_layers] = one_step(kit)
    for key, (policy_loss, policy_grads, _, _) in results.items():
        assert policy_loss == pytest.approx(loss, abs=1e-6), key
        assert all(torch.allclose(policy_grads[n], grads[n], atol=1e-6) for n in grads), key
    recomputed = {key: result[3] - large_backward for key, result in results.items()}
    assert recomputed["save_matmuls", 0] == 0  # no base projection is recomputed
    assert recomputed["full", 0] > 0  # full checkpointing recomputes the forward's products...
    assert 0 < recomputed["save_matmuls", 1] < recomputed["full", 0]  # ...and so does the one full layer


def test_unknown_checkpoint_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="save_matmuls"):
        cpu_dpo_config(tmp_path, checkpoint_policy="everything")


def test_selective_checkpointing_is_refused_under_zero3(tiny, tmp_path):
    from types import SimpleNamespace

    kit = trainer(tiny, tmp_path, activation_checkpointing=True, checkpoint_policy="save_matmuls")
    kit.args.deepspeed_plugin = SimpleNamespace(zero_stage=3)  # what accelerate's zero3 config sets
    with pytest.raises(ValueError, match="checkpoint_policy full with zero3"):
        kit._reduce_activation_memory()


def test_every_n_layers_survives_trls_reference_forward(tiny, tmp_path):
    """TRL re-enables checkpointing after a reference forward with the kwargs dict, every_n_layers inside it."""
    from trl.models.utils import disable_gradient_checkpointing

    for policy in ("full", "save_matmuls"):
        kit = trainer(
            tiny,
            tmp_path,
            activation_checkpointing=True,
            activation_checkpointing_kwargs={"every_n_layers": 2, "use_reentrant": False},
            checkpoint_policy=policy,
        )
        kit.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2
        )  # as Trainer.train does
        layers = [m for m in kit.model.modules() if type(m).__name__ == "Qwen2VLDecoderLayer"]
        before = [m.gradient_checkpointing for m in layers]
        assert not all(before)
        with disable_gradient_checkpointing(kit.model, kit.args.gradient_checkpointing_kwargs):
            pass
        assert [m.gradient_checkpointing for m in layers] == before, policy


def test_save_matmuls_refuses_offload_and_sharing_waits_for_dropout_free_training(tiny, tmp_path):
    kit = trainer(tiny, tmp_path, activation_checkpointing=True, checkpoint_policy="save_matmuls")
    with pytest.raises(ValueError, match="offload"):
        kit.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"offload": True})
    dropout = trainer(tiny, tmp_path, bf16=True, disable_dropout=False, max_steps=1)
    assert all(m.cast_input_dtype_enabled for m in dropout.model.modules() if hasattr(m, "lora_A"))
    plain = trainer(tiny, tmp_path, bf16=True, max_steps=1)
    assert not any(m.cast_input_dtype_enabled for m in plain.model.modules() if hasattr(m, "lora_A"))
    plain.train()  # shares while it trains, then gives PEFT its cast back for forwards outside autocast
    assert all(m.cast_input_dtype_enabled for m in plain.model.modules() if hasattr(m, "lora_A"))


def test_layout_length_counts_padding_as_the_model_runs_it():
    from vlfeedback_kit.training.memory import layout_length

    # two pairs: rows are [chosen 1, chosen 2, rejected 1, rejected 2], padded to 6; prompts of 3 and 2 tokens
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    completion = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    inputs = {"attention_mask": mask, "completion_mask": completion}
    assert layout_length(inputs, packed=False) == 4 * 6
    # packed rows: prompt + chosen + 1 + rejected = 3 + 2 + 1 + 3 = 9 and 2 + 1 + 1 + 2 = 6, padded to 9
    assert layout_length(inputs, packed=True) == 2 * 9
