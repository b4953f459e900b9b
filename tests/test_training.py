"""Silkie training: `accelerate launch` of the tiny recipe on the sample, the kit's DPO step against TRL's, guards."""

import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support.dpo import cpu_dpo_config
from support.launch import CLI, attempt, parameters, run, state_dict, train

from vlfeedback_kit.training.commands import ACCELERATE, RECIPES, launch_command
from vlfeedback_kit.training.freeze import is_vision_parameter


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small sample built into ./vlfeedback and tiny Qwen2-VL / LLaVA models, like the README's main job."""
    root = tmp_path_factory.mktemp("train")
    run([*CLI, "sample", "--out", "sample_release", "--num-instructions", "12"], root)
    run([*CLI, "build", "--source", "sample_release", "--out", "vlfeedback", "--quiet"], root)
    for family in ("qwen2_vl", "llava"):
        run([*CLI, "tiny-model", "--family", family, "--out", f"runs/tiny-{family.replace('_', '-')}"], root)
    return root


def test_tiny_qwen2_vl_run_caches_reference_resumes_and_keeps_vision_frozen(workspace):
    out = workspace / "runs" / "qwen"
    pairs = json.loads((workspace / "vlfeedback" / "build_report.json").read_text())["splits"]["pairs"]["train"]
    micro_batches = math.ceil(pairs / 2)  # per-device batch 2, accumulation 2
    steps_per_epoch = math.ceil(micro_batches / 2)
    common = ["--output_dir", str(out), "--ref_precompute", "false", "--max_steps", "-1", "--save_strategy", "epoch"]
    done = train(workspace, *common, "--num_train_epochs", "2", "--merge", "true")
    assert "accelerate" in done.stdout.splitlines()[0]
    info = json.loads((out / "run_info.json").read_text())
    cache = info["reference_cache"]
    # epoch 1 meets every pair once (a reference forward per batch); epoch 2 is served from the cache
    assert cache["misses"] == pairs and cache["hits"] == pairs
    assert cache["reference_forwards"] == micro_batches
    assert info["dataset"]["revision"].startswith("local-") and info["global_batch_size"] == 4
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(math.isfinite(e["loss"]) for e in log if "loss" in e) and len([e for e in log if "loss" in e]) >= 2
    assert (out / "training_curves.png").stat().st_size > 1000 and (out / "resolved_config.yaml").is_file()

    adapter = state_dict(out)
    assert adapter and all("lora_" in k for k in adapter)
    assert not any("visual" in k for k in adapter), "LoRA reached the vision tower"
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    base, merged = parameters(workspace / "runs" / "tiny-qwen2-vl"), parameters(out / "merged")
    vision = [k for k in base if is_vision_parameter(k)]
    language = [k for k in base if "language_model" in k and k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert vision and all(torch.equal(base[k], merged[k]) for k in vision)
    assert language and any(not torch.equal(base[k], merged[k]) for k in language)

    # resume from the last checkpoint for a third epoch: the step count continues, the cache is reused
    train(workspace, *common, "--num_train_epochs", "3", "--resume_from_checkpoint", "true")
    resumed = json.loads((out / "trainer_state.json").read_text())
    assert resumed["global_step"] == 3 * steps_per_epoch
    assert json.loads((out / "run_info.json").read_text())["reference_cache"]["reference_forwards"] == 0


def test_tiny_llava_run_with_precomputed_reference_and_prefix_sharing(workspace):
    out = workspace / "runs" / "llava"
    train(
        workspace,
        "--model_name_or_path",
        "runs/tiny-llava",
        "--output_dir",
        str(out),
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "1",
        "--ref_cache_dir",
        str(workspace / "llava-cache"),
        "--share_prompt_prefix",
        "true",
    )
    info = json.loads((out / "run_info.json").read_text())
    pairs = json.loads((workspace / "vlfeedback" / "build_report.json").read_text())["splits"]["pairs"]["train"]
    cache = info["reference_cache"]
    # one batched pass (reference batch 4 = 2x the training batch) before training, then only cache hits
    assert cache["reference_forwards"] == math.ceil(pairs / 4) and cache["misses"] == 0 and cache["hits"] == pairs
    assert info["base_model"] == {"name": "tiny-llava", "local": True}  # named, never located (it is published)
    # only PEFT's local config locates the base, so `eval`/`space --adapter RUN_DIR` load it from anywhere
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        workspace / "runs" / "tiny-llava"
    )
    assert math.isfinite(info["metrics"]["train_loss"])
    check = cache["self_check"]  # the first cached batch, recomputed live before it trained the model
    assert check["rows"] == 2 and check["dtype"] == "float32" and check["max_abs_diff"] <= check["tolerance"] == 0.01
    adapter = state_dict(out)
    assert adapter and not any("vision_tower" in k or "multi_modal_projector" in k for k in adapter)
    assert list((workspace / "llava-cache").glob("*.parquet"))


MPO_RECIPE = yaml.safe_load((RECIPES / "silkie-mpo-qwen2-vl-2b-lora.yaml").read_text())
LOSSES = {
    "sigmoid": {"loss_type": ["sigmoid"]},
    "mpo": {"loss_type": MPO_RECIPE["loss_type"], "loss_weights": MPO_RECIPE["loss_weights"]},
}


def last_metric(trainer, name: str) -> float:
    """The last value of a TRL metric the trainer logged, in the mode its model is in."""
    return trainer._metrics["train" if trainer.model.training else "eval"][name][-1]


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("prefix", [False, True], ids=["two-rows", "prefix-shared"])
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_kit_loss_equals_trl_stock_loss_on_the_same_batch(workspace, family, prefix, loss, tmp_path):
    """Every speedup on (reference cache, one image encode, prompt-prefix sharing) against stock TRL, for the paper's
    sigmoid loss and for MPO (silkie-mpo-*: bco_pair reads the cached reference log-probs, sft the policy's per-token
    log-probs, which prefix sharing scatters back to TRL's layout)."""
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.tiny_model import build_tiny_model
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir = workspace / "runs" / f"tiny-{family.replace('_', '-')}"
    dataset = load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(8))
    config = cpu_dpo_config(
        tmp_path, per_device_train_batch_size=4, seed=0, share_prompt_prefix=prefix, **LOSSES[loss]
    )
    reference_dir = build_tiny_model(family, tmp_path / "reference", seed=1)  # another reference than the policy

    def models():
        return {
            "model": AutoModelForImageTextToText.from_pretrained(model_dir),
            "ref_model": AutoModelForImageTextToText.from_pretrained(reference_dir),
        }

    processor = AutoProcessor.from_pretrained(model_dir)
    stock = DPOTrainer(**models(), args=config, train_dataset=dataset, processing_class=processor)
    cache = RefLogpCache(tmp_path / "ref.parquet", {})
    kit = SilkieDPOTrainer(**models(), args=config, train_dataset=dataset, processing_class=processor, ref_cache=cache)
    kit.precompute_reference()
    stock_batch = next(iter(stock.get_train_dataloader()))
    kit_batch = next(iter(kit.get_train_dataloader()))
    assert torch.equal(stock_batch["input_ids"], kit_batch["input_ids"])
    assert kit_batch["pixel_values"].shape[0] * 2 == stock_batch["pixel_values"].shape[0]  # each image prepared once
    stock_loss = stock.compute_loss(stock.model, stock._prepare_inputs(stock_batch))
    forwards = kit.reference_forwards
    kit_loss = kit.compute_loss(kit.model, kit._prepare_inputs(kit_batch))
    assert abs(stock_loss.item() - math.log(2)) > 1e-3  # policy and reference really differ
    assert kit_loss.item() == pytest.approx(stock_loss.item(), rel=1e-4)
    assert stock.loss_types == kit.loss_types == LOSSES[loss]["loss_type"]
    for metric in ("rewards/margins", "logps/chosen", "logps/rejected"):  # what bco_pair and sft are made of
        assert last_metric(kit, metric) == pytest.approx(last_metric(stock, metric), rel=1e-4)
    assert kit.reference_forwards == forwards  # served from the cache
    policy_hook, reference_hook = kit.image_sharing
    # each image once per forward: through the hook for two-row pairs; a packed pair carries its image only once.
    # The reference side: 8 in the pass, then 4 when the step-0 self-check recomputes the first cached batch live
    assert kit.ref_cache_check["rows"] == 4 and kit.ref_cache_check["max_abs_diff"] <= kit.ref_cache_check["tolerance"]
    expected = (0, 0) if prefix else (8 + 4, 4)
    assert (reference_hook.encoded_images, policy_hook.encoded_images) == expected


def test_audit_refuses_truncation_and_names_rows(workspace):
    from datasets import load_dataset
    from transformers import AutoProcessor

    from vlfeedback_kit.training.audit import audit_dataset, check_audit

    dataset = load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(6))
    processor = AutoProcessor.from_pretrained(workspace / "runs" / "tiny-qwen2-vl")
    report = audit_dataset(dataset, processor, max_length=None)
    assert report.image_tokens["min"] > 0 and not report.truncated_rows
    longest = int(report.total_tokens["max"])
    assert not audit_dataset(dataset, processor, max_length=longest).truncated_rows
    cut_answers = audit_dataset(dataset, processor, max_length=longest - 1)
    with pytest.raises(ValueError, match="truncate the answers of 1 rows") as answers:
        check_audit(cut_answers)
    ((row, row_id, tokens),) = cut_answers.truncated_rows
    assert row_id == dataset[row]["id"] and f"{row_id} ({tokens} tokens)" in str(answers.value)
    check_audit(cut_answers, allow_response_truncation=True)
    with pytest.raises(ValueError, match="would cut image tokens"):
        check_audit(audit_dataset(dataset, processor, max_length=20), allow_response_truncation=True)


def test_audit_matches_what_trl_really_builds(workspace):
    from datasets import load_dataset
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlfeedback_kit.training.audit import audit_dataset

    dataset = load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(1))
    processor = AutoProcessor.from_pretrained(workspace / "runs" / "tiny-qwen2-vl")
    batch = DataCollatorForVisionPreference(processor)([dataset[0]])
    real = int(batch["attention_mask"].sum(dim=1).max())
    assert audit_dataset(dataset, processor, max_length=None).total_tokens["max"] == real


@pytest.mark.parametrize("packed", [False, True], ids=["two-rows", "prefix-shared"])
def test_group_by_length_uses_the_audit_lengths_and_pads_less(workspace, tmp_path, packed):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.audit import audit_dataset
    from vlfeedback_kit.training.bench import synthetic_pairs
    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir = workspace / "runs" / "tiny-qwen2-vl"
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = synthetic_pairs(48)  # transformers groups within megabatches of min(rows // (4 x batch), 50) batches
    lengths = audit_dataset(dataset, processor, None).lengths(packed)

    def padding(strategy: str, **kwargs) -> tuple[int, list[str]]:
        """Padded minus real tokens over an epoch of batches of 2, and the pair ids in the order trained."""
        trainer = SilkieDPOTrainer(
            model=AutoModelForImageTextToText.from_pretrained(model_dir),
            args=cpu_dpo_config(
                tmp_path / strategy,
                per_device_train_batch_size=2,
                seed=0,
                train_sampling_strategy=strategy,
                share_prompt_prefix=packed,
            ),
            train_dataset=dataset,
            processing_class=processor,
            ref_cache=RefLogpCache(tmp_path / strategy / "ref.parquet", {}),
            **kwargs,
        )
        wasted, keys = 0, []
        for batch in trainer.get_train_dataloader():
            real = batch["attention_mask"].sum(-1)
            pairs = len(real) // 2
            rows = real[:pairs] + real[pairs:] - (real[:pairs] - batch["completion_mask"][:pairs].sum(-1)) + 1
            rows = rows if packed else torch.maximum(real[:pairs], real[pairs:])
            if strategy == "group_by_length":  # the audit's lengths are what the collator really builds
                by_key = dict(zip(trainer.train_dataset["pair_key"], trainer.train_dataset["length"]))
                assert [by_key[k] for k in batch["pair_keys"]] == rows.tolist()
            wasted += int(rows.max() * pairs - rows.sum())
            keys += batch["pair_keys"]
        # evaluation stays in order (transformers would group it by a length column only the train set has)
        evaluated = trainer.get_eval_dataloader(dataset.select(range(4)))
        assert sum(len(batch["input_ids"]) // 2 for batch in evaluated) == 4
        return wasted, keys

    grouped, grouped_keys = padding("group_by_length", lengths=lengths)
    counted, _ = padding("group_by_length")  # no lengths given: the trainer counts them itself
    shuffled, shuffled_keys = padding("random")
    assert sorted(grouped_keys) == sorted(shuffled_keys) and len(set(grouped_keys)) == 48  # each pair once
    assert grouped == counted < shuffled / 2


def test_lora_targets_never_hit_the_vision_side(workspace):
    import re

    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.training.freeze import is_vision_parameter, language_lora_targets

    pattern = re.compile(language_lora_targets())
    for family in ("tiny-qwen2-vl", "tiny-llava"):
        model = AutoModelForImageTextToText.from_pretrained(workspace / "runs" / family)
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        hits = [n for n in names if pattern.fullmatch(n)]
        assert hits and not any(is_vision_parameter(n) for n in hits)
        assert any("language_model" in n and n.endswith("q_proj") for n in hits)


def test_recipes_state_hardware_and_global_batch():
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        text = path.read_text()
        assert recipe["hardware"] and recipe["recipe_name"] == path.stem
        assert "Global batch" in text and "Hardware:" in text
        if path.stem.startswith("silkie"):
            gpus = int(recipe["hardware"].split("x")[0])
            assert recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] * gpus == 256
    lora = yaml.safe_load((RECIPES / "silkie-qwen2.5-vl-7b-lora.yaml").read_text())
    assert (lora["lora_r"], lora["lora_alpha"], lora["lora_dropout"], lora["beta"]) == (64, 16, 0.05, 0.1)
    assert (lora["learning_rate"], lora["warmup_steps"], lora["weight_decay"], lora["adam_beta2"]) == (
        1e-5,
        0.1,
        0.05,
        0.98,
    )
    assert {p.stem for p in ACCELERATE.glob("*.yaml")} >= {"single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2", "cpu"}


def test_recipe_lora_dropout_reaches_the_adapter(workspace, tmp_path):
    """TRL's disable_dropout (default true) zeroes every dropout, LoRA's included; the paper recipes keep theirs."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.dpo import make_parser
    from vlfeedback_kit.training.freeze import language_lora_targets
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    recipe = RECIPES / "silkie-qwen2.5-vl-7b-lora.yaml"
    _, args, model_args = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--output_dir", "x", "--bf16", "false", "--use_cpu", "true"]
    )
    model_dir = workspace / "runs" / "tiny-qwen2-vl"
    dataset = load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(2))
    for disable, expected in ((args.disable_dropout, model_args.lora_dropout), (True, 0.0)):
        trainer = SilkieDPOTrainer(
            model=AutoModelForImageTextToText.from_pretrained(model_dir),
            args=cpu_dpo_config(tmp_path, disable_dropout=disable),
            train_dataset=dataset,
            processing_class=AutoProcessor.from_pretrained(model_dir),
            peft_config=LoraConfig(r=4, lora_dropout=model_args.lora_dropout, target_modules=language_lora_targets()),
        )
        rates = {m.p for name, m in trainer.model.named_modules() if "lora_dropout" in name and hasattr(m, "p")}
        assert rates == {expected}
    assert model_args.lora_dropout == 0.05


def test_every_recipe_key_is_a_script_field():
    import dataclasses

    from trl import ModelConfig

    from vlfeedback_kit.training.config import SilkieDPOConfig, SilkieScriptArguments

    fields = {f.name for cls in (SilkieScriptArguments, SilkieDPOConfig, ModelConfig) for f in dataclasses.fields(cls)}
    for path in RECIPES.glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) <= fields, path.name


def test_launch_command_and_unknown_recipe():
    command = launch_command("tiny", "cpu", ["--max_steps", "1"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]  # not another env's `accelerate`
    assert command[-4:] == ["--config", str(RECIPES / "tiny.yaml"), "--max_steps", "1"]
    assert str(ACCELERATE / "cpu.yaml") in command
    from vlfeedback_kit.errors import UserError

    with pytest.raises(UserError, match="choose one of"):
        launch_command("nope", "cpu", [])


def test_two_process_ddp_shares_one_reference_pass(workspace):
    """DDP over 2 CPU processes (gloo): each rank computes half the reference pass; both use the merged cache."""
    out = workspace / "runs" / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(RECIPES.parent / "dpo.py"), "--config", str(RECIPES / "tiny.yaml"), "--max_steps", "-1",
               "--num_train_epochs", "1", "--output_dir", str(out), "--ddp_backend", "gloo",
               "--ref_cache_dir", str(workspace / "ddp-cache")]  # fmt: skip
    done = run(command, workspace)
    assert sum(line.startswith("audit: ") for line in done.stdout.splitlines()) == 1  # printed by rank 0 only
    info = json.loads((out / "run_info.json").read_text())
    pairs = json.loads((workspace / "vlfeedback" / "build_report.json").read_text())["splits"]["pairs"]["train"]
    cache = info["reference_cache"]
    assert info["num_processes"] == 2 and info["global_batch_size"] == 8
    assert cache["misses"] == 0 and cache["hits"] >= pairs // 2  # rank 0 trained on its half, all from the cache
    assert cache["reference_forwards"] == math.ceil(math.ceil(pairs / 2) / 4)  # its half of the pass, batches of 4
    assert cache["entries_sent"] == math.ceil(pairs / 2)  # its half, sent once: later merges carry nothing new


def test_reference_pass_encodes_every_batch_and_matches_live_log_probs(workspace, tmp_path):
    """Batches of the same shape must never share image features (their tensors may reuse one memory block)."""
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir = workspace / "runs" / "tiny-qwen2-vl"
    dataset = load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(8))
    trainer = SilkieDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        args=cpu_dpo_config(tmp_path, ref_batch_size=2),
        train_dataset=dataset,
        processing_class=AutoProcessor.from_pretrained(model_dir),
        ref_cache=RefLogpCache(tmp_path / "ref.parquet", {}),
    )
    trainer.precompute_reference()
    reference_hook = trainer.image_sharing[-1]
    assert reference_hook.encoded_images == 8 and reference_hook.reused == 0  # 4 batches of 2, each encoded
    single = DataLoader(trainer._remove_unused_columns(trainer.train_dataset), batch_size=1,
                        collate_fn=trainer.data_collator)  # fmt: skip
    for batch in single:
        (key,) = batch.pop("pair_keys")
        with torch.no_grad():
            chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        assert trainer.ref_cache.values[key] == pytest.approx((chosen.item(), rejected.item()), abs=1e-3)


def test_feature_memo_is_keyed_by_tensor_identity_not_address(workspace):
    """A new batch tensor at the same address (same storage, shape and version) must be encoded again."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.freeze import freeze_vision
    from vlfeedback_kit.training.shared_images import ImageFeatureSharing

    model_dir = workspace / "runs" / "tiny-qwen2-vl"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    freeze_vision(model)
    sharing = ImageFeatureSharing(model)
    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[Image.new("RGB", (224, 224), "red")], text=[prompt], return_tensors="pt")
    kwargs = {
        "input_ids": torch.cat([inputs["input_ids"]] * 2),
        "pixel_values": inputs["pixel_values"],
        "image_grid_thw": torch.cat([inputs["image_grid_thw"]] * 2),
    }
    with torch.no_grad():
        sharing._hook(sharing.inner, (), kwargs)
        sharing._hook(sharing.inner, (), kwargs)  # the reference pass of the same step: reused
        same_address = kwargs | {"pixel_values": kwargs["pixel_values"].detach()}  # another tensor, same storage
        assert same_address["pixel_values"].data_ptr() == kwargs["pixel_values"].data_ptr()
        sharing._hook(sharing.inner, (), same_address)
    assert (sharing.encoded_images, sharing.reused) == (2, 1)


def test_fallback_pair_keys_tell_identical_texts_on_different_images_apart():
    from datasets import Dataset, Image, List

    from vlfeedback_kit.training.trainer import PAIR_KEY, add_pair_keys

    def row(colour: str) -> dict:
        from PIL import Image as PILImage

        buffer = io.BytesIO()
        PILImage.new("RGB", (8, 8), colour).save(buffer, "PNG")
        turn = [{"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]
        return {
            "images": [{"bytes": buffer.getvalue(), "path": None}],
            "prompt": turn,
            "chosen": turn,
            "rejected": turn,
        }

    dataset = Dataset.from_list([row("red"), row("blue"), row("red")]).cast_column("images", List(Image()))
    keys = add_pair_keys(dataset)[PAIR_KEY]
    assert keys[0] == keys[2] != keys[1]


def test_prefix_sharing_refuses_what_it_cannot_pack(workspace):
    from transformers import AutoModelForImageTextToText

    from vlfeedback_kit.training.prefix_sharing import PrefixSharing

    eager = AutoModelForImageTextToText.from_pretrained(workspace / "runs" / "tiny-llava", attn_implementation="eager")
    wrapper = PrefixSharing(eager)
    ids = torch.ones((4, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one image each"):
        wrapper(ids, torch.ones_like(ids), ids, pixel_values=torch.zeros((3, 3, 64, 64)))
    eager.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        PrefixSharing(eager)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_stepz", "2"], "Some specified arguments are not used by the HfArgumentParser: ['--max_stepz', '2']"),
        (["--max_steps", "two"], "argument --max_steps/--max-steps: invalid int value: 'two'"),
        (["--output_dir", "runs/unsaved", "--resume_from_checkpoint", "true"], "runs/unsaved has no checkpoint"),
    ],
    ids=["misspelled", "invalid-value", "resume-without-checkpoint"],
)
def test_train_refuses_bad_flags_in_one_line_before_the_launch(workspace, flags, message):
    done = attempt([*CLI, "train", "--recipe", "tiny", "--accelerate", "cpu", *flags], workspace)
    assert done.returncode == 2 and done.stdout == ""  # nothing launched
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vlfeedback train: error: ") and message in line


def test_docs_resume_example_runs_as_written(workspace):
    """The training page's two resume lines: train 4 steps saving checkpoints, then resume from the last to the
    recipe's 6."""
    page = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    lines = [line.split("#")[0].split() for line in page.splitlines() if "--save_steps 2" in line]
    assert len(lines) == 2 and "--resume_from_checkpoint" in lines[1], lines
    for words in lines:
        assert words[:4] == ["vlfeedback", "train", "--recipe", "tiny"]
        run([*CLI, *words[1:], "--accelerate", "cpu"], workspace)
    state = json.loads((workspace / "runs" / "silkie-tiny" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert (workspace / "runs" / "silkie-tiny" / "checkpoint-4").is_dir()


def tiny_script_args(*flags: str) -> tuple:
    from vlfeedback_kit.training.dpo import parse_arguments

    return parse_arguments(["--config", str(RECIPES / "tiny.yaml"), "--output_dir", "unused", *flags])


def test_local_model_key_follows_content_not_place_or_mtime(workspace, tmp_path):
    import shutil

    from vlfeedback_kit.training.resolve import resolve_model

    original = workspace / "runs" / "tiny-qwen2-vl"
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (copy / "model.safetensors").touch()  # a new mtime, same bytes
    assert resolve_model(str(copy), None).key == resolve_model(str(original), None).key
    weights = copy / "model.safetensors"
    stat, data = weights.stat(), bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight, same size and modification time
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve_model(str(copy), None).key != resolve_model(str(original), None).key


def test_hub_model_key_is_its_commit_online_and_offline(workspace, hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    from vlfeedback_kit.training.resolve import resolve_model

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/tiny-vlm")
    api.upload_folder(folder_path=workspace / "runs" / "tiny-qwen2-vl", repo_id="org/tiny-vlm")
    first = api.model_info("org/tiny-vlm").sha
    assert resolve_model("org/tiny-vlm", None).key == first  # resolving records main -> sha in the local cache
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="extra.json", repo_id="org/tiny-vlm")
    second = api.model_info("org/tiny-vlm").sha
    assert resolve_model("org/tiny-vlm", None).key == second != first
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: the commit the cache knows, never "main"
    assert resolve_model("org/tiny-vlm", None).key == second
    assert resolve_model("org/tiny-vlm", first).key == first


def test_hub_dataset_is_loaded_at_the_commit_recorded(workspace, hub, tmp_path, monkeypatch):
    """main moves between the revision lookup and the load: the run still reads, and records, one commit."""
    parquet = "data/train.parquet"
    import datasets
    from huggingface_hub import HfApi

    from vlfeedback_kit.training.dpo import load_training_data

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/vlf", repo_type="dataset")
    shard = next((workspace / "vlfeedback" / "data" / "pairs").glob("*.parquet"))
    api.upload_file(path_or_fileobj=shard, path_in_repo=parquet, repo_id="org/vlf", repo_type="dataset")
    first = api.dataset_info("org/vlf").sha
    real_load = datasets.load_dataset
    three = tmp_path / "three.parquet"
    real_load(str(workspace / "vlfeedback"), "pairs", split="train").select(range(3)).to_parquet(three)

    def main_moves_then_load(*args, **kwargs):
        api.upload_file(path_or_fileobj=three, path_in_repo=parquet, repo_id="org/vlf", repo_type="dataset")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", main_moves_then_load)
    script_args, _, _ = tiny_script_args("--dataset_name", "org/vlf", "--dataset_config", "default")
    dataset, source = load_training_data(script_args)
    assert source.key == source.load == first != api.dataset_info("org/vlf").sha
    assert dataset["train"].num_rows == datasets.Dataset.from_parquet(str(shard)).num_rows != 3


def test_local_dataset_key_is_the_config_data_not_the_folder(workspace, tmp_path):
    import shutil

    from vlfeedback_kit.cli import main as cli_main
    from vlfeedback_kit.training.resolve import resolve_dataset

    original = resolve_dataset(str(workspace / "vlfeedback"), "pairs", None).key
    copy = tmp_path / "vlfeedback"
    shutil.copytree(workspace / "vlfeedback", copy)
    assert resolve_dataset(str(copy), "pairs", None).key == original  # a copy keeps its cache
    assert cli_main(["pairs", str(copy), "length-balanced"]) == 0  # an unrelated config and new records
    assert resolve_dataset(str(copy), "pairs", None).key == original
    assert resolve_dataset(str(copy), "length-balanced", None).key != original
    assert resolve_dataset(str(copy), "raw", None).key != original


@pytest.mark.parametrize(
    "flags",
    [("--bf16", "true"), ("--dtype", "bfloat16"), ("--attn_implementation", "eager"), ("--load_in_4bit", "true")],
    ids=["autocast", "dtype", "attention", "quantization"],
)
def test_cache_key_holds_precision_attention_and_quantization(flags):
    from vlfeedback_kit.training.ref_cache import namespace
    from vlfeedback_kit.training.resolve import Source, cache_parts

    data, model = Source("d", None, "local-d"), Source("m", None, "local-m")
    base = cache_parts(*tiny_script_args(), {}, data, model)
    changed = cache_parts(*tiny_script_args(*flags), {}, data, model)
    assert namespace(changed) != namespace(base)
    data, model = Source("elsewhere/d", None, "local-d"), Source("x/m", None, "local-m")
    moved = cache_parts(*tiny_script_args(), {}, data, model)
    assert namespace(moved) == namespace(base)  # local folders are keyed by content, not by their path


def self_check_trainer(workspace: Path, tmp_path: Path, cache, **settings):
    from datasets import load_dataset
    from transformers import AutoProcessor

    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir = workspace / "runs" / "tiny-qwen2-vl"
    return SilkieDPOTrainer(
        model=str(model_dir),
        args=cpu_dpo_config(tmp_path, **({"per_device_train_batch_size": 4, "max_steps": 1} | settings)),
        train_dataset=load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(4)),
        processing_class=AutoProcessor.from_pretrained(model_dir),
        ref_cache=cache,
    )


def test_step_zero_self_check_measures_the_cache_against_a_live_forward(workspace, tmp_path):
    from vlfeedback_kit.training.ref_cache import RefLogpCache

    cache = RefLogpCache(tmp_path / "ref.parquet", {})
    trainer = self_check_trainer(
        workspace, tmp_path, cache, per_device_train_batch_size=2, ref_batch_size=4, max_steps=2
    )  # two steps cover the 4 rows: the pass runs
    trainer.train()  # the pass fills the cache in one batch of 4, the first step recomputes its batch of 2 live
    check = trainer.ref_cache_check
    assert check["rows"] == 2 and check["dtype"] == "float32" and check["tolerance"] == 0.01
    assert 0 <= check["max_abs_diff"] < 1e-3
    print(f"self-check, tiny Qwen2-VL, fp32: max |cached - live| = {check['max_abs_diff']:.3g} nats")


def test_step_zero_self_check_stops_a_wrong_cache_naming_rows(workspace, tmp_path):
    from vlfeedback_kit.training.ref_cache import ReferenceCacheMismatch, RefLogpCache

    right = self_check_trainer(workspace, tmp_path / "right", RefLogpCache(tmp_path / "right.parquet", {}))
    right.precompute_reference()
    wrong = RefLogpCache(tmp_path / "wrong.parquet", {})
    wrong.values = dict(right.ref_cache.values)
    row = right.train_dataset[2]
    chosen, rejected = wrong.values[row["pair_key"]]
    wrong.values[row["pair_key"]] = (chosen - 1.0, rejected)  # a stale entry: another model or image
    trainer = self_check_trainer(workspace, tmp_path / "wrong", wrong)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    with pytest.raises(ReferenceCacheMismatch) as stopped:
        trainer.train()
    message = str(stopped.value)
    assert f"row 2 (id {row['id']})" in message and "row 0" not in message and "ref_cache: false" in message
    assert "up to 1 nats (tolerance 0.01 for float32)" in message
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # stopped before the optimizer step
    assert not (tmp_path / "wrong.parquet").exists()  # a wrong cache is not written back


def test_script_loads_the_model_as_trl_does(workspace, tmp_path, monkeypatch):
    """training/dpo.py hands TRL the model id, model_init_kwargs (revision, trust_remote_code, attention, dtype, the
    recipe's own) and ModelConfig's quantization, as trl/scripts/dpo.py does."""
    from trl import get_quantization_config

    from vlfeedback_kit.training import dpo, trainer

    seen = {}

    class Recorder(trainer.SilkieDPOTrainer):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)
            seen["attn"] = self.model.config._attn_implementation

        def train(self, *args, **kwargs):
            seen["trained"] = True
            raise KeyboardInterrupt  # stop before the steps

    monkeypatch.setattr(trainer, "SilkieDPOTrainer", Recorder)
    monkeypatch.chdir(workspace)
    script_args, training_args, model_args = tiny_script_args(
        "--model_init_kwargs", '{"attn_implementation": "eager"}', "--trust_remote_code", "false"
    )
    with pytest.raises(KeyboardInterrupt):
        dpo.main(script_args, training_args, model_args)
    assert seen["model"] == "runs/tiny-qwen2-vl" and seen["trained"] and seen["quantization_config"] is None
    kwargs = training_args.model_init_kwargs
    assert kwargs["attn_implementation"] == "eager" == seen["attn"] and kwargs["trust_remote_code"] is False
    assert kwargs["dtype"] == "float32" and kwargs["revision"] is None  # a local folder: no Hub revision
    _, _, quantized = tiny_script_args("--load_in_4bit", "true")
    assert get_quantization_config(quantized).load_in_4bit


def test_pairs_from_raw_trains_on_the_same_rows_with_each_image_cached_once(workspace):
    """`--pairs_from_raw true`: the pairing config's rows built from `raw` at load time (issue: `pairs` materialises
    one image copy per pair in the local cache), with the same resolved source, so the reference cache still hits."""
    from dataclasses import replace

    from vlfeedback_kit.training.config import SilkieScriptArguments
    from vlfeedback_kit.training.dpo import load_training_data

    args = SilkieScriptArguments(
        dataset_name=str(workspace / "vlfeedback"), dataset_config="pairs", pairs_from_raw=True
    )
    from_raw, source = load_training_data(args)
    plain, plain_source = load_training_data(replace(args, pairs_from_raw=False))
    assert source == plain_source
    for column in ("id", "prompt", "chosen", "rejected", "margin"):
        assert from_raw["train"][column] == plain["train"][column], column
    assert from_raw["train"][0]["images"][0].tobytes() == plain["train"][0]["images"][0].tobytes()


def test_the_script_keeps_its_public_names_after_the_move():
    """Source resolution moved to training/resolve.py; ``local_dataset_key`` stays importable from the script (eval's
    win-rate imports it there), and make_parser is TRL's parser alone (no dead sub-command branch)."""
    import inspect

    from vlfeedback_kit.training import dpo, resolve

    assert dpo.local_dataset_key is resolve.local_dataset_key
    assert list(inspect.signature(dpo.make_parser).parameters) == ["prog"]


def test_prefix_sharing_encodes_each_policy_image_once_per_forward(workspace, tmp_path):
    """A packed forward (4-D mask) carries each image once: the image-sharing hook leaves it to the model instead of
    encoding the images first only to find no repeated halves (LLaVA ran its vision tower twice per packed forward)."""
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    model_dir = workspace / "runs" / "tiny-llava"
    trainer = SilkieDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        args=cpu_dpo_config(tmp_path, share_prompt_prefix=True),
        train_dataset=load_dataset(str(workspace / "vlfeedback"), "pairs", split="train").select(range(2)),
        processing_class=AutoProcessor.from_pretrained(model_dir),
    )
    towers = [trainer.model.model.vision_tower, trainer.ref_model.model.vision_tower]
    forwards = [0, 0]
    for index, tower in enumerate(towers):
        tower.register_forward_hook(lambda *_, index=index: forwards.__setitem__(index, forwards[index] + 1))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    assert forwards == [1, 1]  # policy: one packed forward; reference (TRL's live two-row forward): the hook's encode
    assert [hook.encoded_images for hook in trainer.image_sharing] == [0, 2]
