"""The documentation site: ``mkdocs build --strict`` passes, every page is in the nav, and every block the docs
mark runnable (``<!-- runnable -->`` on the line before the fence) runs on the embedded sample, so the pages
cannot drift from the code."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"
RUNNERS = {"bash": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}
"""How a runnable block of each language is executed."""
FENCE = re.compile(r"```(\w+)\n(.*?)\n```", re.S)


def hook():
    """The site's hook module (docs/hooks/cli_reference.py), for the pages it generates."""
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav: list) -> list[str]:
    """Every page the nav of mkdocs.yml names, in order."""
    pages = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def nav() -> list[str]:
    return nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def runnable_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of each fenced block marked runnable in a Markdown file."""
    text = path.read_text()
    blocks = []
    for match in re.finditer("^" + re.escape(MARKER) + r"\n", text, re.M):  # a line of its own, not inline code
        line = text.count("\n", 0, match.start()) + 1
        fence = FENCE.match(text, match.end())
        assert fence and fence.group(1) in RUNNERS, f"{path.name}:{line}: {MARKER} must precede a bash or python fence"
        blocks.append((line + 2, fence.group(1), fence.group(2)))
    return blocks


def test_site_builds_strict_with_the_generated_cli_reference(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from vlfeedback_kit.cli import make_parser

    reference = (site / "cli" / "index.html").read_text()
    for verb in make_parser()[1]:
        assert f"usage: vlfeedback {verb}" in reference, verb
    for nested in ("vlfeedback eval run", "vlfeedback card model", "vlfeedback publish space"):
        assert f"usage: {nested}" in reference, nested
    for module_name in hook().TOOLS:
        assert f"usage: python -m {module_name}" in reference, module_name
    flags = (site / "training-flags" / "index.html").read_text()
    assert "usage: training/dpo.py" in flags and "--share_prompt_prefix" in flags and "--beta" in flags
    assert (site / "assets" / "arena-screenshot.png").read_bytes() == (
        ROOT / "spaces" / "silkie-vs-base" / "screenshot.png"
    ).read_bytes()


def test_every_page_is_in_the_nav_once():
    pages = nav()
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    module = hook()
    served = {page for page in module.FROM_REPOSITORY if page.endswith(".md")}
    generated = {module.CLI_PAGE, module.TRAINING_FLAGS_PAGE, *served}
    assert len(pages) == len(set(pages))
    assert set(pages) == written | generated


def test_install_page_repeats_the_readme_commands_exactly():
    """The set-up commands appear in the README (the front door) and on the install page: they must not differ."""
    readme, install = (ROOT / "README.md").read_text(), (DOCS / "install.md").read_text()
    commands = [code for language, code in FENCE.findall(readme.split("## What people use it for")[0])]
    assert len(commands) == 2 and all(f"```bash\n{command}\n```" in install for command in commands)


def test_runnable_blocks_run_on_the_sample(tmp_path):
    """The docs' pages in nav order, then the README, in one folder: a later block may use what an earlier one
    made (the sample, the build). Offline: nothing may reach the Hub."""
    files = [DOCS / page for page in nav() if (DOCS / page).is_file()] + [ROOT / "README.md"]
    blocks = [(path, *block) for path in files for block in runnable_blocks(path)]
    assert {language for *_, language, _ in blocks} == set(RUNNERS)
    path_variable = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this Python's `vlfeedback`
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path_variable}
    for path, line, language, code in blocks:
        done = subprocess.run([*RUNNERS[language], code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{path.relative_to(ROOT)}:{line} failed:\n{done.stderr[-3000:]}"
    assert (tmp_path / "vlfeedback" / "data" / "length-balanced").is_dir()
    assert (tmp_path / "release_tree" / "README.md").is_file()


@pytest.mark.parametrize(
    ("text", "problem"),
    [(f"{MARKER}\n```text\nvlfeedback sample\n```\n", "bash or python"), (f"{MARKER}\n\n```bash\nls\n```\n", "fence")],
)
def test_a_marker_without_a_runnable_fence_is_an_error(tmp_path, text, problem):
    """A mistyped marker cannot silently leave a block untested."""
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(AssertionError, match=problem):
        runnable_blocks(page)
