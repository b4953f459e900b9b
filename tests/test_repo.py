"""Repository contracts: CI runs exactly the README's test command; the CLI answers --help instantly."""

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
