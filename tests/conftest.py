"""Test isolation: a private HF cache per session, no telemetry, and the release factory importable."""

import os
import sys
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="vlf-tests-hf-")
os.environ["HF_HOME"] = _HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HOME, "datasets")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
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
