"""Repository contracts: CI runs exactly the README's test command; the CLI answers --help instantly."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme).group(1).strip()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert ci_lines[-1] == command


def test_cli_lists_every_verb():
    done = subprocess.run([sys.executable, "-m", "vlfeedback_kit.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for verb in ("sample", "build", "pairs", "inspect", "tiny-model", "train", "card", "publish"):
        assert verb in done.stdout


INNER_TEST = """
import os
from pathlib import Path


def test_writes_caches():
    import datasets.config
    import evaluate.config
    from datasets import load_dataset
    from huggingface_hub import constants

    home = Path(os.environ["HF_HOME"])
    for path in (constants.HF_HUB_CACHE, constants.HF_XET_CACHE, constants.HF_ASSETS_CACHE,
                 datasets.config.HF_DATASETS_CACHE, evaluate.config.HF_EVALUATE_CACHE,
                 evaluate.config.HF_MODULES_CACHE):
        assert Path(path).is_relative_to(home), path
    data = Path(os.environ["INNER_DATA"])
    data.write_text('{"a": 1}\\n')
    assert load_dataset("json", data_files=str(data), split="train").num_rows == 1
    assert any(Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow"))
"""


def test_tests_never_write_into_the_users_hf_cache(tmp_path):
    """A user whose shell points every HF cache at ~/.cache runs the tests: nothing lands in that home."""
    home = tmp_path / "home"
    user_cache = home / ".cache"
    user_cache.mkdir(parents=True)
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))},
        "HOME": str(home),
        "XDG_CACHE_HOME": str(user_cache),
        "HF_HUB_CACHE": str(user_cache / "huggingface" / "hub"),
        "HF_DATASETS_CACHE": str(user_cache / "huggingface" / "datasets"),
        "HF_EVALUATE_CACHE": str(user_cache / "huggingface" / "evaluate"),
        "HF_MODULES_CACHE": str(user_cache / "huggingface" / "modules"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "INNER_DATA": str(tmp_path / "data.jsonl"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.relative_to(home) for p in home.rglob("*") if p.is_file()] == []
