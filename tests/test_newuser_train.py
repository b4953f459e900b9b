"""What `vlfeedback train` refuses before the launch, in one line: a config without pairs, a name that points at
nothing, a run it would replace, and an abbreviated flag (the kit's parsers take no abbreviations).

Run: pytest tests/test_newuser_train.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.launch import CLI, attempt

from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.training.commands import RECIPES, check_here


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built dataset (raw + pairs) and a stand-in model folder (the checks never load it)."""
    root = tmp_path_factory.mktemp("newuser-train")
    assert cli_main(["sample", "--out", str(root / "sample_release"), "--num-instructions", "6"]) == 0
    assert (
        cli_main(["build", "--source", str(root / "sample_release"), "--out", str(root / "vlfeedback"), "--quiet"])
        == 0
    )
    (root / "model").mkdir()
    return root


def check(workspace: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    """`check_here` (what `vlfeedback train` runs before the launch) on the tiny recipe: exit code, stderr."""
    defaults = {
        "--dataset_name": str(workspace / "vlfeedback"),
        "--model_name_or_path": str(workspace / "model"),
        "--output_dir": str(workspace / "runs" / "fresh"),
    }
    given = dict(zip(flags[::2], flags[1::2]))
    argv = ["", str(RECIPES / "tiny.yaml"), *[x for item in {**defaults, **given}.items() for x in item]]
    code = check_here(argv)
    return code, capsys.readouterr().err.strip()


def test_the_checks_pass_on_a_good_setup(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    assert check(workspace, capsys) == (0, "")


def test_a_config_without_pairs_is_refused_naming_the_pair_configs(
    workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = workspace / "vlfeedback"
    code, err = check(workspace, capsys, "--dataset_config", "raw")
    assert (
        code == 2
        and err == f"--dataset_config raw holds no preference pairs; train on one of {folder}'s pairing configs: pairs"
    )
    code, err = check(workspace, capsys, "--dataset_config", "pairz")
    assert (
        code == 2 and err.startswith(f"--dataset_config pairz is not a config of {folder}") and err.endswith(": pairs")
    )


@pytest.mark.parametrize("flag", ["--dataset_name", "--model_name_or_path"])
def test_a_name_that_is_neither_a_folder_nor_a_hub_id_is_refused(
    workspace: Path, capsys: pytest.CaptureFixture, flag: str
) -> None:
    code, err = check(workspace, capsys, flag, "nosuch_dataset_folder")
    assert code == 2
    name = "nosuch_dataset_folder"
    assert err == f"{flag} {name}: no folder {name} here, and {name} is not a Hub id (ORG/NAME)"


def test_an_org_name_shaped_typo_is_refused_before_the_launch(
    workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runs/tiny-typo` reads as ORG/NAME: it is resolved on the Hub before the launch, and the line says there is no
    such folder here either."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, err = check(workspace, capsys, "--model_name_or_path", "runs/tiny-typo")
    assert code == 2 and err.startswith("no folder runs/tiny-typo here, and cannot resolve model runs/tiny-typo")


def test_a_run_dir_that_holds_a_run_is_kept_unless_resuming_or_overwriting(
    workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    run = workspace / "runs" / "silkie"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "adapter_model.safetensors").write_bytes(b"weights of an earlier run")
    code, err = check(workspace, capsys, "--output_dir", str(run))
    assert code == 2 and err.startswith(
        f"--output_dir {run} already holds a run; resume it with --resume_from_checkpoint"
    )
    assert "--overwrite_output_dir true" in err
    assert check(workspace, capsys, "--output_dir", str(run), "--overwrite_output_dir", "true") == (0, "")
    assert check(workspace, capsys, "--output_dir", str(run), "--resume_from_checkpoint", "true") == (0, "")


def test_an_abbreviated_flag_is_refused_not_taken_for_another(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = check(workspace, capsys, "--max_step", "2")
    assert code == 2 and err == "Some specified arguments are not used by the HfArgumentParser: ['--max_step', '2']"
    out = workspace / "tiny"
    with pytest.raises(SystemExit) as exited:
        cli_main(["tiny-model", "--family", "llava", "--out", str(out), "--over"])
    assert exited.value.code == 2 and "unrecognized arguments: --over" in capsys.readouterr().err
    assert not out.exists()


def test_a_loaded_split_without_pair_columns_is_refused() -> None:
    """A Hub dataset's config is only known once loaded: checked before the audit reads a row."""
    from types import SimpleNamespace

    from vlfeedback_kit.training.dpo import check_pair_columns

    args = SimpleNamespace(dataset_name="org/vlfeedback", dataset_config="raw")
    with pytest.raises(UserError, match=r"--dataset_config raw of org/vlfeedback has no chosen, rejected column"):
        check_pair_columns(["id", "prompt", "completions", "image"], args)
    check_pair_columns(["prompt", "chosen", "rejected", "images"], args)


def test_vlfeedback_train_refuses_before_launching(workspace: Path) -> None:
    """The CLI end to end: nothing is launched (no command printed), one line on stderr."""
    run = workspace / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "run_info.json").write_text("{}")
    flags = ["--dataset_name", "vlfeedback", "--model_name_or_path", "model", "--output_dir", str(run)]
    done = attempt([*CLI, "train", "--recipe", "tiny", "--accelerate", "cpu", *flags], workspace)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"vlfeedback train: error: --output_dir {run} already holds a run")
