"""``vlfeedback space`` from a folder holding a ``spaces/`` folder (the kit's checkout): ``import spaces`` finds that
folder, a namespace package without ``GPU``, and the arena runs without ZeroGPU's decorator instead of failing.

Run: pytest tests/test_followups_space_gpu.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.eval.arena import ui as arena_ui
from vlfeedback_kit.eval.arena.commands import gpu_decorator


class Created(Exception):
    """Raised by the stand-in ``create_app``: the verb got as far as building the app."""


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working directory at the front of ``sys.path`` (what ``python -m`` does with the working
    directory), with no ``spaces`` module imported yet; all of it undone afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "spaces", None)  # recorded as absent, so the teardown removes what is imported
    monkeypatch.delitem(sys.modules, "spaces")
    importlib.invalidate_caches()
    return tmp_path


def test_space_from_a_checkout_with_a_spaces_folder_runs_without_the_gpu_decorator(
    importable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (importable / "spaces" / "silkie-vs-base").mkdir(parents=True)
    (importable / "spaces" / "silkie-vs-base" / "app.py").write_text("")
    seen = {}

    def create_app(config: object, gpu: object) -> None:
        seen["gpu"] = gpu
        raise Created

    monkeypatch.setattr(arena_ui, "create_app", create_app)
    with pytest.raises(Created):
        cli_main(["space", "--adapter", "runs/silkie-tiny", "--model", "tiny-base"])
    assert seen["gpu"] is arena_ui.no_gpu
    imported = sys.modules["spaces"]  # the folder was what `import spaces` found: the case of the issue
    assert not hasattr(imported, "GPU") and str(importable / "spaces") in list(imported.__path__)


def test_hugging_faces_spaces_package_gives_its_gpu_decorator(importable: Path) -> None:
    (importable / "spaces").mkdir()
    (importable / "spaces" / "__init__.py").write_text("def GPU(fn=None, **kwargs):\n    return fn\n")
    assert gpu_decorator() is sys.modules["spaces"].GPU
