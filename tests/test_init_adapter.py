"""A run that starts from an existing adapter (``init_adapter``: a run dir, an adapter folder, a Hub id) with the
reference ``reference_policy`` names (the base, or the starting adapter frozen), against TRL's stock trainer; the
reference cache keyed by that reference; the records and the card; the rounds' CLI path with the MPO recipe.

Run: pytest tests/test_init_adapter.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from support.dpo import cpu_dpo_config
from support.launch import CLI, attempt, run, state_dict
from support.tiny_silkie import tiny_silkie

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.training.commands import RECIPES
from vlfeedback_kit.training.freeze import language_lora_targets

MPO = yaml.safe_load((RECIPES / "silkie-mpo-qwen2-vl-2b-lora.yaml").read_text())
MPO_LOSS = {"loss_type": MPO["loss_type"], "loss_weights": MPO["loss_weights"]}


@pytest.fixture(scope="module")
def silkie(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny Qwen2-VL base, a Silkie-like run dir whose adapter moves the policy away from the base)."""
    return tiny_silkie(tmp_path_factory.mktemp("silkie"))


def lora(r: int = 4):
    """The recipe's LoRA settings; the default equals the run dir's adapter."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=32, target_modules=language_lora_targets(("q_proj", "v_proj", "o_proj")))


def pairs():
    from test_families import pairs as family_pairs

    return family_pairs(2)


def kit_trainer(base: Path, out: Path, cache: bool = True, peft_config=None, **settings):
    from transformers import AutoProcessor

    from vlfeedback_kit.training.ref_cache import RefLogpCache
    from vlfeedback_kit.training.trainer import SilkieDPOTrainer

    return SilkieDPOTrainer(
        model=str(base),
        args=cpu_dpo_config(out, seed=0, **settings),
        train_dataset=pairs(),
        processing_class=AutoProcessor.from_pretrained(base),
        peft_config=peft_config or lora(),
        ref_cache=RefLogpCache(out / "ref.parquet", {}) if cache else None,
    )


def test_reference_policy_init_needs_an_init_adapter():
    from vlfeedback_kit.training.config import SilkieDPOConfig
    from vlfeedback_kit.training.dpo import parse_arguments

    with pytest.raises(ValueError, match="no --init_adapter is given; pass --init_adapter"):
        SilkieDPOConfig(output_dir="unused", reference_policy="init", use_cpu=True, report_to="none")
    tiny = ["--config", str(RECIPES / "tiny.yaml"), "--output_dir", "unused"]
    with pytest.raises(UserError, match="no --init_adapter is given"):
        parse_arguments([*tiny, "--reference_policy", "init"])
    with pytest.raises(UserError, match="invalid choice: 'policy'"):
        parse_arguments([*tiny, "--init_adapter", "runs/r0", "--reference_policy", "policy"])
    with pytest.raises(UserError, match="pass --init_adapter too"):
        parse_arguments([*tiny, "--init_adapter_revision", "v1"])
    _, args, _ = parse_arguments([*tiny, "--init_adapter", "runs/r0", "--reference_policy", "init"])
    assert (args.init_adapter, args.init_adapter_revision, args.reference_policy) == ("runs/r0", None, "init")


@pytest.mark.parametrize("policy", ["init", "base"])
def test_run_from_an_adapter_equals_trl_stock_mpo_with_every_speedup(silkie, tmp_path, policy):
    """The kit (reference cache, one image encode, prompt-prefix sharing, MPO) against TRL's stock DPOTrainer given
    the same starting adapter: TRL's frozen copy of it as the reference (init), or the base model (base)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    base, adapter = silkie
    settings = {"init_adapter": str(adapter), "reference_policy": policy, "share_prompt_prefix": True, **MPO_LOSS}
    kit = kit_trainer(base, tmp_path / "kit", **settings)
    assert set(kit.model.peft_config) == ({"default", "ref"} if policy == "init" else {"default"})
    saved = state_dict(adapter)
    start = {k: v for k, v in kit.model.named_parameters() if ".default." in k}
    assert all(p.requires_grad for p in start.values()) and len(start) == len(saved)
    assert all(torch.equal(start[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
    assert not any(p.requires_grad for k, p in kit.model.named_parameters() if ".ref." in k)  # frozen reference

    policy_model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base), adapter, is_trainable=True
    )
    reference = {"ref_model": AutoModelForImageTextToText.from_pretrained(base)} if policy == "base" else {}
    stock = DPOTrainer(model=policy_model, **reference, args=cpu_dpo_config(tmp_path / "stock", seed=0, **MPO_LOSS),
                       train_dataset=pairs(), processing_class=AutoProcessor.from_pretrained(base))  # fmt: skip
    stock_loss = stock.compute_loss(stock.model, stock._prepare_inputs(next(iter(stock.get_train_dataloader()))))
    assert kit.precompute_reference() == 2
    kit_loss = kit.compute_loss(kit.model, kit._prepare_inputs(next(iter(kit.get_train_dataloader()))))
    assert kit_loss.item() == pytest.approx(stock_loss.item(), rel=1e-4)
    assert kit.reference_forwards == 1 and kit.ref_cache_check["max_abs_diff"] <= kit.ref_cache_check["tolerance"]
    margin = kit._metrics["train"]["rewards/margins"][-1]
    assert margin == pytest.approx(stock._metrics["train"]["rewards/margins"][-1], rel=1e-4, abs=1e-6)
    # init: the reference is the starting policy, so the first step's rewards are 0; base: the adapter moved it
    assert (margin == 0.0) if policy == "init" else (abs(margin) > 1e-3)

    kit.train()
    kit.save_model(str(tmp_path / "out"))
    trained = state_dict(tmp_path / "out")
    assert set(trained) == set(saved) and any(not torch.equal(trained[k], saved[k]) for k in saved)
    assert not (tmp_path / "out" / "ref").exists()  # the run dir holds the trained adapter only
    if policy == "init":  # the reference copy did not train
        ref = {k.replace(".ref.", "."): p for k, p in kit.model.named_parameters() if ".ref." in k}
        assert ref and all(torch.equal(ref[k], v) for k, v in saved.items())


def test_resumed_run_keeps_the_starting_adapter_as_reference(silkie, tmp_path):
    """A checkpoint holds the trained adapter only; resuming rebuilds the frozen reference from init_adapter, so the
    resumed run ends where the uninterrupted one does."""
    base, adapter = silkie
    settings = {"init_adapter": str(adapter), "reference_policy": "init", "max_steps": 2,
                "per_device_train_batch_size": 1, "save_strategy": "steps", "save_steps": 1, **MPO_LOSS}  # fmt: skip
    whole = kit_trainer(base, tmp_path / "whole", cache=False, **settings)
    whole.train()
    checkpoint = tmp_path / "whole" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "ref").exists()
    resumed = kit_trainer(base, tmp_path / "resumed", cache=False, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    ends = [{k: p.detach() for k, p in t.model.named_parameters() if ".default." in k} for t in (whole, resumed)]
    assert ends[0].keys() == ends[1].keys() and all(torch.allclose(ends[0][k], ends[1][k]) for k in ends[0])
    saved = state_dict(adapter)
    assert any(not torch.equal(ends[1][k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
    reference = {k.replace(".ref.", "."): p for k, p in resumed.model.named_parameters() if ".ref." in k}
    assert all(torch.equal(reference[k], v) for k, v in saved.items())


def test_other_lora_settings_are_refused_in_one_line_naming_the_fix(silkie, tmp_path):
    from vlfeedback_kit.training.init_adapter import starting_policy

    base, adapter = silkie
    with pytest.raises(UserError) as refused:
        kit_trainer(base, tmp_path, peft_config=lora(r=8), init_adapter=str(adapter))
    message = str(refused.value)
    assert "\n" not in message and "lora_r 4 where the recipe has 8" in message and "pass --lora_r 4" in message
    with pytest.raises(UserError, match="set use_peft true"):
        starting_policy({"model": str(base), "args": cpu_dpo_config(tmp_path, init_adapter=str(adapter))}, None)


def test_reference_policy_init_stops_when_trl_makes_no_reference_copy(silkie, tmp_path, monkeypatch):
    """TRL 1.16 names its frozen copy of a passed adapter "ref"; a TRL that names it otherwise (or makes none) would
    train against the base while the records say init: refused at construction, naming the way out."""
    from vlfeedback_kit.training import compat

    base, adapter = silkie
    monkeypatch.setattr(compat, "REFERENCE_ADAPTER", "reference")
    with pytest.raises(compat.CompatError, match="reference_policy init needs trl .* use reference_policy base"):
        kit_trainer(base, tmp_path, cache=False, init_adapter=str(adapter), reference_policy="init")


def test_cache_key_names_the_reference_policy_and_adapter(silkie, tmp_path):
    """A cache filled against one reference is never read for another: the namespace names the policy and, for
    init, the adapter's content (a copy or its published form keeps it, one changed weight does not) or commit."""
    from vlfeedback_kit.training.dpo import parse_arguments
    from vlfeedback_kit.training.init_adapter import adapter_digest, resolve_adapter
    from vlfeedback_kit.training.ref_cache import namespace
    from vlfeedback_kit.training.resolve import Source, cache_parts

    _, adapter = silkie
    copy, changed = tmp_path / "copy", tmp_path / "changed"
    shutil.copytree(adapter, copy)
    shutil.copytree(adapter, changed)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "tiny-base"}))
    weights = bytearray((changed / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 1
    (changed / "adapter_model.safetensors").write_bytes(bytes(weights))
    assert adapter_digest(copy) == adapter_digest(adapter) != adapter_digest(changed)

    def key(*flags: str, init: Source | None = None) -> str:
        args = parse_arguments(["--config", str(RECIPES / "tiny.yaml"), "--output_dir", "unused", *flags])
        return namespace(cache_parts(*args, {}, Source("d", None, "local-d"), Source("m", None, "local-m"), init))

    def init(folder: Path) -> list[str]:
        return ["--init_adapter", str(folder), "--reference_policy", "init"]

    start = resolve_adapter(str(adapter), None)
    base = key()
    assert key("--init_adapter", str(adapter), init=start) == base  # reference base: the same values, shared
    assert key(*init(adapter), init=start) != base
    assert key(*init(copy), init=resolve_adapter(str(copy), None)) == key(*init(adapter), init=start)
    assert key(*init(changed), init=resolve_adapter(str(changed), None)) != key(*init(adapter), init=start)
    hub = ["--init_adapter", "org/silkie", "--reference_policy", "init"]
    assert key(*hub, init=Source("org/silkie", "a" * 40, "a" * 40)) != key(
        *hub, init=Source("org/silkie", "b" * 40, "b" * 40)
    )


def test_hub_adapter_is_loaded_at_the_commit_recorded(silkie, hub, tmp_path):
    from huggingface_hub import HfApi

    from vlfeedback_kit.training.init_adapter import resolve_adapter, start_record

    base, adapter = silkie
    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/silkie-r1")
    api.upload_folder(folder_path=adapter, repo_id="org/silkie-r1", allow_patterns=["adapter_*"])
    first = api.model_info("org/silkie-r1").sha
    moved = {k: v + 1 for k, v in state_dict(adapter).items()}
    from safetensors.torch import save_file

    save_file(moved, tmp_path / "adapter_model.safetensors")
    api.upload_file(path_or_fileobj=tmp_path / "adapter_model.safetensors", path_in_repo="adapter_model.safetensors",
                    repo_id="org/silkie-r1")  # fmt: skip
    assert resolve_adapter("org/silkie-r1", None).key == api.model_info("org/silkie-r1").sha != first
    pinned = resolve_adapter("org/silkie-r1", first)
    assert start_record(pinned, cpu_dpo_config(tmp_path, init_adapter="org/silkie-r1", init_adapter_revision=first))[
        "init_adapter"] == {"name": "org/silkie-r1", "revision": first, "requested_revision": first}  # fmt: skip
    kit = kit_trainer(base, tmp_path / "kit", cache=False, init_adapter="org/silkie-r1", init_adapter_revision=first)
    weights = {k.replace(".default.", "."): p for k, p in kit.model.named_parameters() if ".default." in k}
    assert all(torch.equal(weights[k], v) for k, v in state_dict(adapter).items())  # the first commit's, not main's
    with pytest.raises(UserError, match="--init_adapter org/missing"):
        resolve_adapter("org/missing", None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The README's main job's inputs (a built sample, a tiny Qwen2-VL) and a round-0 adapter of the tiny recipe's
    LoRA settings whose up-projections are non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("rounds")
    run([*CLI, "sample", "--out", "sample_release", "--num-instructions", "6"], root)
    run([*CLI, "build", "--source", "sample_release", "--out", "vlfeedback", "--quiet"], root)
    run([*CLI, "tiny-model", "--family", "qwen2_vl", "--out", "runs/tiny-qwen2-vl"], root)
    recipe = yaml.safe_load((RECIPES / "tiny-mpo.yaml").read_text())
    config = LoraConfig(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
                        target_modules=language_lora_targets(), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(root / "runs" / "tiny-qwen2-vl"), config)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(root / "runs" / "round-0")
    return root


def test_rounds_cli_trains_mpo_from_the_previous_adapter_and_records_it(workspace):
    from vlfeedback_kit.training.init_adapter import adapter_digest

    out = workspace / "runs" / "round-1"
    flags = ["--init_adapter", "runs/round-0", "--reference_policy", "init", "--output_dir", str(out)]
    run([*CLI, "train", "--recipe", "tiny-mpo", "--accelerate", "cpu", *flags, "--max_steps", "2"], workspace)
    info = json.loads((out / "run_info.json").read_text())
    assert info["init_adapter"] == {"name": "round-0", "local": True, "revision": adapter_digest(workspace / "runs" /
                                    "round-0"), "requested_revision": None}  # fmt: skip
    assert info["reference_policy"] == "init" and info["recipe"] == "tiny-mpo"
    assert info["hyperparameters"]["loss_type"] == MPO["loss_type"]
    assert info["hyperparameters"]["loss_weights"] == MPO["loss_weights"]
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert log[0]["rewards/margins"] == 0.0  # the reference is round-0's policy, where the run starts
    card = (out / "README.md").read_text()
    assert "the LoRA adapter `round-0` (a local folder; content digest `local-" in card
    assert "the starting adapter, frozen (`reference_policy: init`)" in card
    assert "0.8 × sigmoid + 0.2 × bco_pair + 1 × sft, mixed preference optimisation (MPO)" in card
    assert str(workspace) not in card and str(workspace) not in (out / "run_info.json").read_text()
    assert not (out / "ref").exists()


def test_train_refuses_a_starting_point_that_is_no_adapter_before_the_launch(workspace):
    done = attempt([*CLI, "train", "--recipe", "tiny-mpo", "--accelerate", "cpu", "--init_adapter", "vlfeedback",
                    "--output_dir", "runs/never"], workspace)  # fmt: skip
    assert done.returncode == 2 and not (workspace / "runs" / "never").exists()
    assert "--init_adapter vlfeedback is a folder without adapter_config.json" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("adapter", "info", "rows"),
    [
        (True, {"init_adapter": None, "reference_policy": "base"},
         ["| starting point | a new LoRA adapter on the base model |",
          "| reference policy | the base model, adapters disabled (`reference_policy: base`) |"]),
        (False, {"init_adapter": None, "reference_policy": "base"},
         ["| starting point | the base model's weights |",
          "| reference policy | the base model (`reference_policy: base`) |"]),
        (True, {"init_adapter": {"name": "org/silkie-r1", "revision": "c" * 40}, "reference_policy": "init"},
         ["| starting point | the LoRA adapter [`org/silkie-r1`](https://huggingface.co/org/silkie-r1) "
          f"(revision `{'c' * 40}`), trained on |",
          "| reference policy | the starting adapter, frozen (`reference_policy: init`) |"]),
        (True, {}, []),  # a run recorded before init_adapter: the card claims nothing about it
    ],
    ids=["new-adapter", "full-weights", "hub-start", "older-record"],
)  # fmt: skip
def test_card_states_where_training_started_and_the_reference(silkie, tmp_path, adapter, info, rows):
    from support.run_dirs import write_run_dir

    from vlfeedback_kit.cards.model import render_model_card

    card = str(render_model_card(write_run_dir(tmp_path / "run", silkie[0], adapter, curves=False, **info)))
    assert all(row in card for row in rows)
    assert ("| starting point |" in card) == bool(rows) and "loss " not in card.split("| method |")[1].split("\n")[0]
