"""Progress bars are huggingface_hub's tqdm, so HF_HUB_DISABLE_PROGRESS_BARS silences them."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("disabled", [False, True])
def test_build_progress_bars_follow_hf_hub_disable_progress_bars(tmp_path, disabled):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    if disabled:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    run = [sys.executable, "-m", "vlfeedback_kit.cli"]
    subprocess.run([*run, "sample", "--out", "release", "--num-instructions", "40"], cwd=tmp_path, env=env,
                   check=True, capture_output=True)  # fmt: skip
    done = subprocess.run([*run, "build", "--source", "release", "--out", "built"], cwd=tmp_path, env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    bar = "rows/s]" in done.stderr
    assert bar is not disabled, done.stderr[-500:]
