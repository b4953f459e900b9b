"""One import name (vlfeedback_kit), spaces/ not a package, extras with one-line messages, version guards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from vlfeedback_kit.extras import IncompatibleVersion, check_versions, pinned_ranges

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_FOLDERS = ("builders", "training", "eval", "cards", "spaces", "tests")


def run_python(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The kit's wheel, built as `pip wheel --no-deps .` builds it (setuptools from the dev extra: no download)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy of the tracked tree: building writes build/ and *.egg-info beside the sources
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "!!" not in done.stdout + done.stderr  # setuptools' warning boxes (license table, undeclared data)
    assert "SetuptoolsDeprecationWarning" not in done.stdout + done.stderr
    (path,) = out.glob("vlfeedback_kit-*.whl")
    return path


def test_wheel_adds_exactly_one_top_level_import_name(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        recorded = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
    top = {path.split("/")[0] for path in recorded if not path.split("/")[0].endswith(".dist-info")}
    assert top == {"vlfeedback_kit"}
    for folder in TOP_LEVEL_FOLDERS:
        assert not any(path.startswith(f"{folder}/") for path in recorded), folder
    for sub in ("builders", "builders/pipeline", "training", "eval", "cards"):
        assert f"vlfeedback_kit/{sub}/__init__.py" in recorded
    # package data travels with it: recipes, accelerate configs, card templates, pipeline adapters and rubric
    for data in ("training/recipes/tiny.yaml", "training/accelerate/cpu.yaml", "cards/templates/model_card.md",
                 "builders/pipeline/adapters.yaml", "builders/pipeline/rubric.md"):
        assert f"vlfeedback_kit/{data}" in recorded, data


def test_the_installed_wheel_runs_without_a_checkout(wheel, tmp_path):
    """Unpacked into a site folder of its own (what pip install does with it), from a folder with no checkout."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = run_python(
        """
        import json
        import vlfeedback_kit.training.dpo as dpo
        from vlfeedback_kit.training.commands import launch_command
        print(json.dumps({"dpo": dpo.__file__, "command": launch_command("tiny", "cpu", ["--max_steps", "1"])}))
        """,
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    package = site / "vlfeedback_kit"
    assert found["dpo"] == str(package / "training" / "dpo.py")
    command = found["command"]
    assert str(package / "training" / "recipes" / "tiny.yaml") in command
    assert str(package / "training" / "accelerate" / "cpu.yaml") in command
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(package / "training" / "accelerate" / "cpu.yaml"), "-m", "vlfeedback_kit.training.dpo", "--help"],
        cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    assert "--dataset_name" in launched.stdout and "--ref_cache" in launched.stdout


def test_spaces_is_a_folder_of_space_apps_not_a_package(tmp_path):
    assert not (ROOT / "spaces" / "__init__.py").exists()
    stub = tmp_path / "stub"
    (stub / "spaces").mkdir(parents=True)
    (stub / "spaces" / "__init__.py").write_text("def GPU(fn=None, **kw):\n    return fn\n\nSTUB = True\n")
    done = run_python(
        """
        import vlfeedback_kit.cli, vlfeedback_kit.training.commands  # the kit is imported first
        import spaces
        print(spaces.__file__, getattr(spaces, "STUB", False))
        """,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(stub)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(stub / "spaces" / "__init__.py"), "True"]


BLOCKED = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # what an environment without the extra looks like to an import
from vlfeedback_kit.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("argv", "blocked", "extra"),
    [
        (["train", "--recipe", "tiny"], ["trl"], "train"),
        (["tiny-model", "--family", "qwen2_vl", "--out", "m"], ["torch"], "train"),
        (["annotate", "--input", "r", "--out", "a", "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "j"],
         ["openai"], "pipeline"),
    ],
)
def test_a_verb_whose_extra_is_missing_says_what_to_install(argv, blocked, extra, tmp_path):
    done = run_python(BLOCKED.format(blocked=blocked, argv=argv), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f'pip install "vlfeedback-kit[{extra}]"' in lines[0] and blocked[0] in lines[0]
    assert not list(tmp_path.iterdir())  # nothing was started


def test_eval_asks_for_the_extras_its_arguments_need(tmp_path):
    """MME needs no judge: scoring its official layout runs without any extra; a judged benchmark asks for [eval],
    a local model for [train] (the flags decide, not the verb)."""
    every = ["torch", "torchvision", "transformers", "trl", "peft", "accelerate", "openai", "gradio", "evaluate"]
    (tmp_path / "mme").mkdir()
    (tmp_path / "mme" / "OCR.txt").write_text("1.png\tIs it a sign?\tYes\tYes\n1.png\tIs it a cat?\tNo\tyes\n")
    done = run_python(BLOCKED.format(blocked=every, argv=["eval", "score", "mme", "mme", "--out", "s.json"]),
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text())["subtasks"]["OCR"] == 50.0  # acc 50, acc+ 0
    for argv, blocked, extra in (
        (["eval", "score", "mmhal", "t.json", "--judge-model", "j", "--out", "h.json"], ["openai"], "eval"),
        (["eval", "run", "--benchmark", "mme", "--data", "mme=mme", "--model", "m", "--out", "o"], ["torch"], "train"),
        (["eval", "run", "--benchmark", "mme,winrate", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1",
          "--model", "m", "--data", "mme=mme", "--out", "o"], ["openai"], "eval"),
    ):  # fmt: skip
        done = run_python(BLOCKED.format(blocked=blocked, argv=argv), cwd=tmp_path)
        assert done.returncode == 2 and f'pip install "vlfeedback-kit[{extra}]"' in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mme", "s.json"]  # nothing else was started


def test_core_verbs_run_without_any_extra(tmp_path):
    blocked = ["torch", "torchvision", "transformers", "trl", "peft", "accelerate", "openai", "gradio", "evaluate"]
    for argv in (["sample", "--out", "s", "--num-instructions", "12"], ["build", "--source", "s", "--out", "v",
                                                                       "--quiet"], ["inspect", "v"]):
        done = run_python(BLOCKED.format(blocked=blocked, argv=argv), cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stderr)
    assert (tmp_path / "v" / "data").is_dir()


def test_pins_guard_the_private_apis_the_extensions_use():
    ranges = pinned_ranges()
    for name in ("trl", "transformers", "peft"):
        assert name in ranges, name
    check_versions()  # the environment the suite runs in is a supported one
    with pytest.raises(IncompatibleVersion) as err:
        check_versions(installed={"trl": "1.17.0", "transformers": "6.0.0", "peft": "0.14.0"}, ranges=ranges)
    message = str(err.value)
    assert "\n" not in message
    for part in ("trl 1.17.0", "transformers 6.0.0", "peft 0.14.0", "pip install", ranges["trl"]):
        assert part in message


def test_an_unsupported_trl_refuses_training_verbs_and_keeps_the_rest(tmp_path):
    fake = """
    import importlib.metadata as md, sys
    real = md.version
    md.version = lambda name: "1.99.0" if name == "trl" else real(name)
    from vlfeedback_kit.cli import main
    sys.exit(main({argv!r}))
    """
    train = run_python(fake.format(argv=["train", "--recipe", "tiny"]), cwd=tmp_path)
    assert train.returncode == 2
    assert train.stderr.count("\n") == 1 and "(supported: " in train.stderr
    sample = run_python(fake.format(argv=["sample", "--out", "s", "--num-instructions", "8"]), cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert "trl 1.99.0" in train.stderr and pinned_ranges()["trl"] in train.stderr
    importing = run_python(fake.split("from vlfeedback_kit.cli")[0] + "import vlfeedback_kit.training\n", cwd=tmp_path)
    assert importing.returncode == 1
    assert "IncompatibleVersion: vlfeedback_kit.training is tested with" in importing.stderr
