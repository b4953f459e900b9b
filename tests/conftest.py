"""Test isolation: a private HF cache per session, no telemetry, and the release factory importable.

Every cache location of huggingface_hub, datasets, evaluate and transformers is derived from ``HF_HOME`` — a fresh
temp dir per session — or set inside it, before any of them is imported (they read the environment at import):
no test writes into the user's ``~/.cache/huggingface``, whatever the user's shell exports.
"""

import os
import sys
import tempfile
from pathlib import Path

HF_MODULES = ("huggingface_hub", "datasets", "evaluate", "transformers")
CACHE_VARIABLES = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_DATASETS_CACHE",
    "HF_EVALUATE_CACHE",
    "HF_METRICS_CACHE",
    "HF_MODULES_CACHE",
    "TRANSFORMERS_CACHE",
    "XDG_CACHE_HOME",
)
"""Variables that would move a cache out of ``HF_HOME`` (a user's own settings must not leak into the tests)."""

_imported = [name for name in HF_MODULES if name in sys.modules]
if _imported:
    raise RuntimeError(f"{', '.join(_imported)} imported before tests/conftest.py pointed its caches at a temp dir")
_HOME = tempfile.mkdtemp(prefix="vlf-tests-hf-")
for _name in CACHE_VARIABLES:
    os.environ.pop(_name, None)
os.environ["HF_HOME"] = _HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HOME, "datasets")
os.environ["HF_EVALUATE_CACHE"] = os.path.join(_HOME, "evaluate")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME, "xdg")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["VLFEEDBACK_BENCH_RESULTS"] = os.path.join(_HOME, "bench-results")  # benchmarks run by tests log here
os.environ.pop("HF_TOKEN", None)

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402
from support.hub_server import HubServer, point_clients_at  # noqa: E402


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh loopback fake Hub that huggingface_hub and datasets (here and in subprocesses) point at."""
    with HubServer() as server:
        point_clients_at(server, tmp_path / "hf_home", monkeypatch)
        yield server
