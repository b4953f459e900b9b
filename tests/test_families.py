"""Every family of training/families.py on the CPU: its tiny model, the audit with its real processor, the kit's loss
against TRL's stock loss, the vision side frozen and out of LoRA's reach, the reference cache, and each speedup the
family allows (or its refusal, naming the family and the reason).

Run: pytest tests/test_families.py
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from support.dpo import cpu_dpo_config
from support.launch import CLI, parameters, run, state_dict, train

from vlfeedback_kit.training.audit import ImageTokens
from vlfeedback_kit.training.families import FAMILIES, SPEEDUPS, check_speedups, support_table
from vlfeedback_kit.training.freeze import is_vision_parameter, language_lora_targets

NAMES = list(FAMILIES)
NEW = ["qwen3_vl", "gemma3", "idefics3", "llava_onevision", "internvl"]
COVERED = ("qwen2_vl", "llava")  # tests/test_training.py runs these speedups on them with the sample's real rows
PROCESSORS = {
    "qwen3_vl": "Qwen3VLProcessor",
    "gemma3": "Gemma3Processor",
    "idefics3": "Idefics3Processor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "internvl": "InternVLProcessor",
}
ASSISTANT_TURN = {  # how each chat template opens the assistant's answer
    "qwen3_vl": "<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>model\n",
    "idefics3": "Assistant:",
    "llava_onevision": "<|im_start|>assistant\n",
    "internvl": "<|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``model_dir(family)``: the family's tiny model, built on first use and shared by the module's tests."""
    from vlfeedback_kit.training.tiny_model import build_tiny_model

    root, built = tmp_path_factory.mktemp("families"), {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


def jpeg(count: int, size: tuple[int, int]) -> dict:
    image = Image.new("RGB", size, "white")
    for i in range(count):
        ImageDraw.Draw(image).ellipse((10 + 40 * i, 20, 40 + 40 * i, 60), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def pairs(n: int = 2, sizes: list[tuple[int, int]] | None = None):
    """``n`` short pair rows in the kit's schema, each with an image of another size (so another token count), or of
    the (width, height) ``sizes`` given."""
    from datasets import Dataset

    from vlfeedback_kit.builders.features import ASPECTS, PAIR_FEATURES

    def message(role: str, text: str, image: bool = False) -> list[dict]:
        return [{"role": role, "content": ([{"type": "image", "text": None}] if image else []) + [
            {"type": "text", "text": text}]}]  # fmt: skip

    rows = [
        {
            "id": f"pair-{i}",
            "source": "SVIT",
            "images": [jpeg(i + 1, sizes[i] if sizes else (448 - 96 * i, 320 + 64 * i))],
            "prompt": message("user", "How many circles are there in the image?", image=True),
            "chosen": message("assistant", f"There are {i + 1} red circles in the image." + " Yes." * i),
            "rejected": message("assistant", "No."),
            "chosen_model": "gpt-4v",
            "rejected_model": "fuyu-8b",
            "chosen_ratings": dict.fromkeys(ASPECTS, 5),
            "rejected_ratings": dict.fromkeys(ASPECTS, 1),
            "chosen_score": 5.0,
            "rejected_score": 1.0,
            "margin": 4.0,
        }  # fmt: skip
        for i in range(n)
    ]
    return Dataset.from_list(rows, features=PAIR_FEATURES)


def load(folder: Path, perturb: bool = False):
    """The tiny model; ``perturb``: its language side nudged (seeded), a reference that differs from the policy."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder)
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if not is_vision_parameter(name):
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("family", NEW)
def test_tiny_model_has_the_real_processor_template_and_image_tokens(model_dir, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = model_dir(family)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(processor).__name__ == PROCESSORS[family]
    assert type(model).__name__ == FAMILIES[family].architecture and model.config.model_type == family
    assert sum(p.numel() for p in model.parameters()) < 600_000  # tiny
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]}]
    text = processor.apply_chat_template(message, add_generation_prompt=True)
    assert text.endswith(ASSISTANT_TURN[family]) and "How many circles?" in text
    image = Image.new("RGB", (300, 200), "white")
    inputs = processor(images=[[image]], text=[text], return_tensors="pt", add_special_tokens=False)
    # what the audit counts for an image of this size: every token the processor puts in place of the placeholder
    # (image tokens and the family's wrappers: <fake_token_around_image><global-img>…, <img>…</img>, newlines)
    text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    expanded = inputs["input_ids"].shape[1] - text_tokens + 1
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert ImageTokens(processor)((200, 300)) == expanded >= image_tokens > 0
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", NAMES)
def test_audit_counts_what_trl_builds_and_refuses_truncation(model_dir, family):
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlfeedback_kit.training.audit import audit_dataset, check_audit

    processor = AutoProcessor.from_pretrained(model_dir(family))
    dataset = pairs(2)
    report = audit_dataset(dataset, processor, max_length=None)
    for i in range(2):  # per row: the longer of prompt + chosen and prompt + rejected, as TRL's collator builds it
        batch = DataCollatorForVisionPreference(processor)([dataset[i]])
        assert report.lengths()[i] == int(batch["attention_mask"].sum(dim=1).max())
    with pytest.raises(ValueError, match="truncate the answers of 1 rows"):
        check_audit(audit_dataset(dataset, processor, max_length=int(report.total_tokens["max"]) - 1))


@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_audit_counts_tiled_images_as_the_processor_builds_them(model_dir, family):
    """With tiling on (SmolVLM's image splitting, InternVL's crop_to_patches) the tokens of an image and around it
    depend on its tile grid (2 x 2, 1 x 2, 2 x 1 here): a wrapper count measured on one probe size is not right for
    all, and transformers 5.25 stopped counting the wrappers in ``_get_num_multimodal_tokens``."""
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlfeedback_kit.training.audit import audit_dataset

    processor = AutoProcessor.from_pretrained(model_dir(family))
    if family == "idefics3":
        processor.image_processor.do_image_splitting = True
        processor.image_processor.max_image_size = {"longest_edge": 64}
    else:
        processor.image_processor.crop_to_patches, processor.image_processor.max_patches = True, 6
    dataset = pairs(3, sizes=[(448, 336), (448, 120), (120, 448)])
    report = audit_dataset(dataset, processor, max_length=None)
    built = [int(DataCollatorForVisionPreference(processor)([dataset[i]])["attention_mask"].sum(dim=1).max())
             for i in range(3)]  # fmt: skip
    assert report.lengths() == built and report.image_tokens["min"] < report.image_tokens["max"]


@pytest.mark.parametrize("family", [name for name in NAMES if name not in COVERED])
def test_kit_loss_equals_trl_stock_loss_with_each_image_speedup(model_dir, family, tmp_path):
    """Reference cache + one image encode per step (and prompt-prefix sharing where allowed) against stock TRL."""
    from transformers import AutoProcessor
    from trl import DPOTrainer

    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    folder = model_dir(family)
    processor, dataset = AutoProcessor.from_pretrained(folder), pairs(2)

    def models():
        return {"model": load(folder), "ref_model": load(folder, perturb=True)}

    config = cpu_dpo_config(tmp_path / "stock", seed=0)
    stock = DPOTrainer(**models(), args=config, train_dataset=dataset, processing_class=processor)
    stock_batch = next(iter(stock.get_train_dataloader()))
    stock_loss = stock.compute_loss(stock.model, stock._prepare_inputs(stock_batch)).item()
    assert abs(stock_loss - math.log(2)) > 1e-3  # policy and reference really differ
    packings = [False] + ([True] if FAMILIES[family].reason("share_prompt_prefix") is None else [])
    for packed in packings:
        run = tmp_path / f"kit-{packed}"
        kit = SilkieDPOTrainer(
            **models(),
            args=cpu_dpo_config(run, seed=0, share_prompt_prefix=packed),
            train_dataset=dataset,
            processing_class=processor,
            ref_cache=RefLogpCache(run / "ref.parquet", {}),
        )
        assert kit.precompute_reference() == 2 and kit.reference_forwards == 1
        batch = next(iter(kit.get_train_dataloader()))
        assert torch.equal(batch["input_ids"], stock_batch["input_ids"])
        assert batch["pixel_values"].shape[0] * 2 == stock_batch["pixel_values"].shape[0]  # each image prepared once
        loss = kit.compute_loss(kit.model, kit._prepare_inputs(batch)).item()
        assert loss == pytest.approx(stock_loss, rel=1e-4), packed
        assert kit.reference_forwards == 1  # the step's reference came from the cache
        policy_hook, reference_hook = kit.image_sharing
        # the encoder ran once per image per forward: through the hook for two-row pairs (never a silent no-op);
        # a packed pair carries its image once, so the model encodes it itself. The reference side: 2 in the pass,
        # then 2 when the step-0 self-check recomputes the first cached batch live, within its tolerance
        assert kit.ref_cache_check["rows"] == 2
        assert kit.ref_cache_check["max_abs_diff"] <= kit.ref_cache_check["tolerance"]
        assert (reference_hook.encoded_images, policy_hook.encoded_images) == ((0, 0) if packed else (4, 2))


def one_step(kit) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and LoRA gradients of one training step of ``kit`` on its first batch."""
    inputs = kit._prepare_inputs(next(iter(kit.get_train_dataloader())))
    kit.model.train()
    kit.model.zero_grad(set_to_none=True)
    with kit.compute_loss_context_manager(), kit.accelerator.autocast():
        loss = kit.compute_loss(kit.model, dict(inputs))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in kit.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", [name for name in NAMES if name != "qwen2_vl"])  # test_activations.py has it
def test_save_matmuls_and_share_lora_inputs_keep_loss_and_gradients(model_dir, family, tmp_path):
    from peft import LoraConfig
    from transformers import AutoProcessor

    from vlfeedback_kit.training.activations import checkpointed_language_layers
    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    folder = model_dir(family)
    processor, dataset = AutoProcessor.from_pretrained(folder), pairs(1)

    def kit(name: str, **overrides):
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=language_lora_targets(), init_lora_weights=False)
        return SilkieDPOTrainer(
            model=load(folder),
            args=cpu_dpo_config(tmp_path / name, seed=0, **overrides),
            train_dataset=dataset,
            processing_class=processor,
            peft_config=lora,
            ref_cache=RefLogpCache(tmp_path / name / "ref.parquet", {}),
        )

    plain = kit("plain")
    plain.model.enable_input_require_grads()  # as checkpointing does
    loss, grads = one_step(plain)
    selective = kit("save_matmuls", activation_checkpointing=True, checkpoint_policy="save_matmuls")
    selective.model.enable_input_require_grads()
    selective.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = checkpointed_language_layers(selective.model)
    assert len(layers) == 2 and all("context_fn" in m._gradient_checkpointing_func.keywords for m in layers)
    checkpointed_loss, checkpointed_grads = one_step(selective)
    assert checkpointed_loss == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == checkpointed_grads.keys() and grads
    assert all(torch.allclose(checkpointed_grads[n], grads[n], atol=1e-6) for n in grads)

    copied_loss, copied_grads = one_step(kit("bf16-copies", bf16=True, share_lora_inputs=False))
    shared = kit("bf16-shared", bf16=True)
    assert not any(m.cast_input_dtype_enabled for m in shared.model.modules() if hasattr(m, "lora_A"))
    shared_loss, shared_grads = one_step(shared)
    assert shared_loss == copied_loss
    assert all(torch.equal(shared_grads[n], copied_grads[n]) for n in copied_grads)


def test_a_refused_speedup_names_the_family_and_the_reason(model_dir, tmp_path, caplog):
    from transformers import AutoProcessor

    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    folder = model_dir("gemma3")
    with pytest.raises(ValueError, match=r"share_prompt_prefix is not available for the gemma3 family: .*token_type"):
        SilkieDPOTrainer(
            model=load(folder),
            args=cpu_dpo_config(tmp_path, share_prompt_prefix=True),
            train_dataset=pairs(2),
            processing_class=AutoProcessor.from_pretrained(folder),
        )
    check_speedups("mistral3", ["share_image_features"])  # outside the table: allowed, with a warning
    assert "mistral3 is not among the tested families" in caplog.text


@pytest.mark.parametrize(
    ("recipe", "family", "base"),
    [("silkie-qwen3-vl-8b-lora", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
     ("silkie-gemma3-12b-lora", "gemma3", "google/gemma-3-12b-it")],
)  # fmt: skip
def test_current_base_recipes_keep_the_papers_hyperparameters(recipe, family, base):
    import yaml

    from vlfeedback_kit.training.commands import RECIPES
    from vlfeedback_kit.training.config import SilkieDPOConfig
    from vlfeedback_kit.training.families import enabled_speedups

    text = (RECIPES / f"{recipe}.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["model_name_or_path"] == base and "Predicted peak memory:" in text and "Global batch 256" in text
    assert (config["lora_r"], config["lora_alpha"], config["lora_dropout"], config["beta"]) == (64, 16, 0.05, 0.1)
    assert (config["learning_rate"], config["warmup_steps"], config["weight_decay"], config["adam_beta2"]) == (
        1e-5, 0.1, 0.05, 0.98)  # fmt: skip
    assert config["num_train_epochs"] == 3 and config["disable_dropout"] is False
    gpus = int(config["hardware"].split("x")[0])
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * gpus == 256
    fields = SilkieDPOConfig.__dataclass_fields__
    args = SilkieDPOConfig.__new__(SilkieDPOConfig)  # the recipe's speedup switches over the config's defaults
    for name in ("ref_cache", "share_image_features", "share_prompt_prefix", "share_lora_inputs", "checkpoint_policy"):
        setattr(args, name, config.get(name, fields[name].default))
    check_speedups(family, enabled_speedups(args))  # the recipe turns on nothing its family refuses


def test_docs_support_table_is_the_family_table():
    page = (Path(__file__).parents[1] / "docs" / "families.md").read_text()
    assert support_table() in page
    assert set(SPEEDUPS) == {"ref_cache", "share_image_features", "share_prompt_prefix", "save_matmuls",
                             "share_lora_inputs"}  # fmt: skip


@pytest.mark.parametrize(("shape", "billions"), [("qwen2-vl-7b", 8.29), ("qwen3-vl-8b", 8.77), ("gemma3-12b", 12.2)])
def test_real_width_shapes_have_the_public_parameter_counts(shape, billions, tmp_path):
    """The shapes the step benchmark and the memory tool build (meta device: no memory) match the published model
    sizes, and their processors give the real number of image tokens for a 448 px image."""
    from vlfeedback_kit.training.bench import SHAPES, build_model

    model, processor = build_model(shape, tmp_path, "cpu", meta=True)
    assert model.config.model_type == SHAPES[shape]["family"]
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - billions) < 0.01 * billions
    image = Image.new("RGB", (448, 448), "white")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )
    ids = processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"]
    image_tokens = int((ids == model.config.image_token_id).sum())
    assert image_tokens == {"qwen2_vl": 256, "qwen3_vl": 196, "gemma3": 256}[SHAPES[shape]["family"]]
    if shape == "gemma3-12b":  # the model pools its 64 x 64 patches to as many soft tokens as the processor inserts
        assert model.config.mm_tokens_per_image == image_tokens


def test_bench_family_flag_is_for_tiny_or_its_own_shapes(tmp_path):
    from vlfeedback_kit.training.bench import build_model, main

    with pytest.raises(SystemExit, match="--family gemma3 runs with --shape tiny or its own shapes"):
        build_model("qwen2-vl-7b", tmp_path, "cpu", family="gemma3")
    with pytest.raises(SystemExit):  # argparse: not a tiny-model family
        main(["--family", "mistral3"])


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory):
    """A 3-instruction sample (15 pairs) built into ./vlfeedback, for one launch per model family."""
    root = tmp_path_factory.mktemp("train-families")
    run([*CLI, "sample", "--out", "sample_release", "--num-instructions", "3"], root)
    run([*CLI, "build", "--source", "sample_release", "--out", "vlfeedback", "--quiet"], root)
    return root


@pytest.mark.parametrize("family", NEW)
def test_tiny_recipe_launches_on_every_family(small_workspace, family):
    """`vlfeedback tiny-model --family F` then `vlfeedback train --recipe tiny` through accelerate on it: the audit
    passes with the family's real processor, loss is logged, LoRA trains the language model only (vision weights of
    the merged model equal the base's), and the second epoch is served from the reference cache (the recipe's
    image-feature sharing on)."""
    model, out = f"runs/tiny-{family}", small_workspace / "runs" / f"silkie-{family}"
    run([*CLI, "tiny-model", "--family", family, "--out", model], small_workspace)
    train(small_workspace, "--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "-1",
          "--num_train_epochs", "2", "--ref_precompute", "false", "--merge", "true")  # fmt: skip
    info = json.loads((out / "run_info.json").read_text())
    report = json.loads((small_workspace / "vlfeedback" / "build_report.json").read_text())
    pairs = report["splits"]["pairs"]["train"]
    cache = info["reference_cache"]
    assert cache["misses"] == pairs and cache["hits"] == pairs  # epoch 2 never ran the reference model
    assert {"ref_cache", "share_image_features"} <= set(info["speedups"]) and info["model_type"] == family
    assert info["image_features"]["encoded"] > 0  # the family's images went through the shared encode
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) >= 2 and all(math.isfinite(loss) for loss in losses)
    adapter = state_dict(out)
    assert adapter and all("lora_" in k for k in adapter) and not any(is_vision_parameter(k) for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    base, merged = parameters(small_workspace / model), parameters(out / "merged")
    vision = [k for k in base if is_vision_parameter(k)]
    assert vision and all(torch.equal(base[k], merged[k]) for k in vision)  # frozen: bit for bit
    assert any(not torch.equal(base[k], merged[k]) for k in base if k not in vision)  # the language model trained
