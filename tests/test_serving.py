"""The serving layer: one loaded base model answers as Silkie (adapter on) and as the base (adapter off) in one
batched generate; n samples per prompt from one encode, each seeded by its item alone."""

import re

import pytest
from PIL import Image
from support.tiny_silkie import tiny_silkie

from vlfeedback_kit.serving import (
    BASE,
    SILKIE,
    GenerationSettings,
    base_of_run,
    draw_seed,
    generate,
    generate_both,
    load,
    sample,
)


@pytest.fixture(scope="module")
def silkie(tmp_path_factory):
    """A tiny Qwen2-VL and a LoRA adapter whose up-projections are non-zero (so Silkie differs from its base)."""
    return tiny_silkie(tmp_path_factory.mktemp("serving"))


def prompts() -> list:
    colours = ("red", "blue", "green")
    return [(Image.new("RGB", (56 + 28 * i, 56), c), f"What colour is the {c} square?") for i, c in enumerate(colours)]


def test_both_sides_from_one_batched_pass_equal_separate_models(silkie):
    base, run = silkie
    served = load(None, adapter=str(run))  # the base comes from the run dir
    assert served.model_id == str(base) and base_of_run(run) == str(base)
    settings = GenerationSettings(max_new_tokens=12)
    silkie_answers, base_answers = generate_both(served, prompts(), settings)
    alone_silkie = [generate(served, [p], [SILKIE], settings)[0] for p in prompts()]
    plain = load(str(base))
    alone_base = [generate(plain, [p], None, settings)[0] for p in prompts()]
    assert silkie_answers == alone_silkie and base_answers == alone_base
    assert silkie_answers != base_answers  # the adapter does something


def vision_calls(served) -> list[int]:
    """Records the batch of patches each vision-tower forward gets."""
    from vlfeedback_kit.serving import inner_vlm

    calls = []
    tower = next(m for name, m in inner_vlm(served.model).named_children() if name in ("visual", "vision_tower"))
    tower.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    return calls


def test_compare_base_encodes_each_image_once(silkie):
    """The adapter leaves the vision tower alone, so Silkie's and the base's rows share one encode per image (the
    processor prepares each image once too)."""
    served = load(None, adapter=str(silkie[1]))
    calls = vision_calls(served)
    generate_both(served, prompts(), GenerationSettings(max_new_tokens=3))
    patches_once = served.processor(text=["<|image_pad|>"] * 3, images=[[p[0]] for p in prompts()])["pixel_values"]
    assert calls == [patches_once.shape[0]]


def test_eval_run_batches_encode_each_image_once_for_both_sides(silkie):
    """`eval run --compare-base`'s answerer sends items asked of both sides through one shared encode, and the rest
    (a resumed run's leftover rows) through a plain pass, with the answers of separate generation."""
    import io

    from vlfeedback_kit.eval.generation import Side, transformers_answerer
    from vlfeedback_kit.eval.items import Item

    served = load(None, adapter=str(silkie[1]))
    settings = GenerationSettings(max_new_tokens=5)
    silkie_side, base_side = Side("silkie", SILKIE, {}), Side("base", BASE, {})
    items = []
    for i, (image, question) in enumerate(prompts()):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        items.append((Item(f"q{i}", question, image_bytes=buffer.getvalue()), question))
    batch = [(item, q, side) for item, q in items[:2] for side in (silkie_side, base_side)] + [
        (items[2][0], items[2][1], base_side)]  # fmt: skip
    calls = vision_calls(served)
    answers = transformers_answerer(served, settings)(batch)
    pair_patches = served.processor(text=["<|image_pad|>"] * 2, images=[[i.image()] for i, _ in items[:2]])
    assert calls[:2] == [pair_patches["pixel_values"].shape[0], calls[1]]  # the two paired items' images once each
    assert len(calls) == 2  # ... then the leftover row in a plain pass
    expected = [generate(served, [(item.image(), q)], [side.route], settings)[0] for item, q, side in batch]
    assert answers == expected


def test_an_adapter_in_the_vision_tower_answers_alone_and_refuses_base_rows_in_one_line(tmp_path):
    """PEFT switches adapters per row in language layers only: an adapter with LoRA in the vision tower answers as
    Silkie (equal to the merged model), and base rows or --compare-base are refused naming the weight and the fix."""
    base, run = tiny_silkie(tmp_path, targets=r".*(visual\.blocks\.\d+\.attn\.qkv|language_model.*\.q_proj)")
    served = load(None, adapter=str(run))
    assert "visual.blocks" in served.vision_adapter_weight
    settings = GenerationSettings(max_new_tokens=6)
    answers = generate(served, prompts()[:2], None, settings)
    merged = load(str(base))
    merged.model = served.model.merge_and_unload()
    assert answers == generate(merged, prompts()[:2], None, settings)
    for call in (lambda: generate_both(served, prompts()[:1]), lambda: generate(served, prompts()[:1], [BASE])):
        with pytest.raises(ValueError, match=r"vision tower \(.*visual\.blocks.*merge_and_unload"):
            call()


def test_adapter_rows_need_an_adapter(silkie):
    base, _ = silkie
    plain = load(str(base))
    with pytest.raises(ValueError, match="without an adapter"):
        generate(plain, prompts()[:1], [SILKIE])
    with pytest.raises(ValueError, match="needs an adapter"):
        generate_both(plain, prompts()[:1])
    assert generate(plain, prompts()[:1], [BASE], GenerationSettings(max_new_tokens=2))


@pytest.mark.parametrize("family", ["gemma3", "idefics3"])
def test_compare_base_serves_other_families_through_the_same_loader(family, tmp_path):
    """The loader training uses (AutoModelForImageTextToText + AutoProcessor) serves any tiny-model family."""
    base, run = tiny_silkie(tmp_path, family=family)
    served = load(None, adapter=str(run))
    settings = GenerationSettings(max_new_tokens=6)
    silkie_answers, base_answers = generate_both(served, prompts()[:2], settings)
    assert silkie_answers == [generate(served, [p], [SILKIE], settings)[0] for p in prompts()[:2]]
    assert base_answers == [generate(served, [p], [BASE], settings)[0] for p in prompts()[:2]]


def test_an_adapter_that_is_not_there_is_one_line_naming_the_folder(tmp_path):
    """The shared loader checks the adapter before loading anything: a missing folder, a model folder given as the
    adapter, an unfinished run dir (its checkpoints named) and a folder of something else are each one line."""
    from vlfeedback_kit.errors import UserError

    missing = tmp_path / "runs" / "silkie-typo"
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    unfinished = tmp_path / "unfinished"
    for step in (2, 10):
        (unfinished / f"checkpoint-{step}").mkdir(parents=True)
        (unfinished / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
    cases = {
        missing: f"--adapter {missing}: no folder {missing} here, and {missing} is not a Hub id",
        merged: "holds full model weights, not a LoRA adapter: pass it as --model",
        unfinished: f"has not finished: pass a checkpoint such as {unfinished / 'checkpoint-10'}",
        tmp_path: "is a folder without adapter_config.json",
    }
    for adapter, message in cases.items():
        with pytest.raises(UserError, match=re.escape(message)):
            load(None, adapter=str(adapter))


def test_space_with_a_missing_adapter_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from vlfeedback_kit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "spaces", None)  # not ZeroGPU (the repo's spaces/ folder is no `spaces` package)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # ORG/NAME-shaped: the Hub is asked too
    assert main(["space", "--adapter", "runs/silkie-typo"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("vlfeedback space: error: --adapter runs/silkie-typo: no folder runs/silkie-typo here")
    assert "offline mode" in line


SAMPLED = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=5)


def test_a_prompts_samples_do_not_depend_on_the_batch(silkie):
    """n = 4 samples of a prompt alone equal its 4 samples inside a batch of 3 prompts (in another place), and each
    draw equals one separate generate with that draw's seed: a sample depends on (seed, item) only."""
    served = load(None, adapter=str(silkie[1]))
    red, blue, green = prompts()
    alone = sample(served, [blue], 4, SAMPLED, seeds=[7])
    together = sample(served, [green, blue, red], 4, SAMPLED, seeds=[3, 7, 9])
    assert together[1] == alone[0] and len(alone[0]) == 4
    assert len(set(alone[0])) > 1  # the draws differ
    assert alone[0] == [generate(served, [blue], None, SAMPLED, seeds=[draw_seed(7, j)])[0] for j in range(4)]
    assert sample(served, [blue], 4, SAMPLED, seeds=[8])[0] != alone[0]  # the seed is what samples


def test_sampled_rows_of_a_batch_equal_each_item_alone(silkie):
    """Batched sampling with a seed per item (decode, eval) answers each row as that item alone, on both sides."""
    served = load(None, adapter=str(silkie[1]))
    seeds = [11, 22, 33]
    together = generate(served, prompts(), None, SAMPLED, seeds=seeds)
    assert together == [generate(served, [p], None, SAMPLED, seeds=[s])[0] for p, s in zip(prompts(), seeds)]
    silkie_answers, base_answers = generate_both(served, prompts(), SAMPLED, seeds)
    assert silkie_answers == together
    assert base_answers == [generate(served, [p], [BASE], SAMPLED, seeds=[s])[0] for p, s in zip(prompts(), seeds)]


def test_n_samples_prepare_and_encode_each_image_once(silkie):
    """sample(n=4) runs the vision tower once on each image's patches (the features repeated for the 4 rows)."""
    served = load(None, adapter=str(silkie[1]))
    calls = vision_calls(served)
    answers = sample(served, prompts(), 4, GenerationSettings(max_new_tokens=3, temperature=1.0))
    patches_once = served.processor(text=["<|image_pad|>"] * 3, images=[[p[0]] for p in prompts()])["pixel_values"]
    assert calls == [patches_once.shape[0]] and [len(a) for a in answers] == [4, 4, 4]
    greedy = sample(served, prompts(), 2, GenerationSettings(max_new_tokens=5))
    assert greedy == [[a, a] for a in generate(served, prompts(), None, GenerationSettings(max_new_tokens=5))]


def test_the_old_eval_serving_import_still_works():
    """vlfeedback_kit.eval.serving is a deprecated re-export of vlfeedback_kit.serving for one release."""
    from vlfeedback_kit import serving
    from vlfeedback_kit.eval import serving as old

    assert old.load is serving.load and old.generate_both is serving.generate_both and old.BASE == serving.BASE
    assert "Deprecated" in old.__doc__


def test_rows_may_name_any_loaded_adapter(silkie, tmp_path):
    """Several adapters over one base: rows naming Silkie, a second adapter and the base share one batch, each
    answering as it does alone; a row naming an adapter that is not loaded is refused."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base, run = silkie
    other = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    torch.manual_seed(1)
    for name, param in other.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    other.save_pretrained(tmp_path / "other")
    served = load(None, adapter=str(run), more_adapters={"other": str(tmp_path / "other")})
    assert served.adapters == (SILKIE, "other")
    settings = GenerationSettings(max_new_tokens=8)
    rows = [SILKIE, "other", BASE]
    together = generate(served, [prompts()[0]] * 3, rows, settings)
    assert together == [generate(served, [prompts()[0]], [name], settings)[0] for name in rows]
    assert len(set(together)) == 3
    with pytest.raises(ValueError, match=r"\['missing'\] name no loaded adapter"):
        generate(served, prompts()[:1], ["missing"])
