"""The arena's configuration (``ARENA_*`` environment variables, i.e. Space variables and secrets) and the two
contenders it serves: Silkie (the adapter) and its base."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from vlfeedback_kit.eval.pairwise import MIN_BATTLES
from vlfeedback_kit.serving import BASE, SILKIE, GenerationSettings, ServedModel

VOTER_STORAGE_KEY = "vlf_arena_voter"
"""localStorage key of the anonymous voter id (``gr.BrowserState``)."""


@dataclass(frozen=True)
class ArenaConfig:
    """What the Space serves and where its votes go; every field has an ``ARENA_*`` environment variable."""

    model: str | None = None
    """Base model id or folder (``ARENA_MODEL``); None: read from the adapter run dir."""
    model_revision: str | None = None
    adapter: str = "runs/silkie-tiny"
    """Silkie adapter id or run dir (``ARENA_ADAPTER``); the default is what the README's main job trains."""
    adapter_revision: str | None = None
    votes_repo: str | None = None
    """Dataset repo the votes are pushed to (``ARENA_VOTES_REPO``); None keeps them in ``votes_dir`` only."""
    public_votes: bool = False
    """Create the votes repo public (``ARENA_PUBLIC_VOTES=1``); by default it is created private, and votes are
    never pushed to a repo that is public unless this is set (votes hold each visitor's prompt and image)."""
    votes_dir: str = "arena-votes"
    push_every_minutes: float = 5.0
    voter_secret: str | None = None
    """Encrypts the voter id in the browser (``ARENA_VOTER_SECRET``, a Space secret) so ids survive restarts; None:
    a random key made at start, and the votes record that their voter ids do not survive a restart."""
    max_new_tokens: int = 128
    max_new_tokens_limit: int = 512
    temperature: float = 0.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    battles_per_minute: int = 6
    """Battles and ``/compare`` calls (one limit for both) per gradio session a minute."""
    votes_per_minute: int = 12
    clients_per_address: int = 4
    """An address (hashed, memory only) may make this many sessions' worth of requests (people behind one NAT)."""
    proxy_hops: int = 0
    """Trusted proxies in front of the app: the client address is the ``X-Forwarded-For`` entry this many from the
    right (``ARENA_PROXY_HOPS``); 0: the connection's address. From the environment, 1 on a Space (``SPACE_ID``)."""
    queue_size: int = 32
    time_limit_s: float = 120.0
    gpu_duration_s: int = 60
    min_votes: int = MIN_BATTLES
    examples_dir: str | None = None
    """A built VLFeedback folder whose held-out split gives the example prompts (``ARENA_EXAMPLES_DIR``)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ArenaConfig:
        """The config from ``ARENA_<FIELD>`` variables (``HF_TOKEN`` is never read here: huggingface_hub reads it)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {"proxy_hops": 1} if environ.get("SPACE_ID") else {}  # behind the Hub's proxy
        for spec in fields(cls):
            raw = environ.get(f"ARENA_{spec.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = str(spec.type).split(" | ")[0]
            if kind == "bool":
                values[spec.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[spec.name] = {"int": int, "float": float}.get(kind, str)(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def settings(self, max_new_tokens: int | None = None, temperature: float | None = None) -> GenerationSettings:
        """Generation settings for one battle, clamped to the configured limits."""
        tokens = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        temperature = self.temperature if temperature is None else float(temperature)
        return GenerationSettings(max_new_tokens=max(1, min(tokens, self.max_new_tokens_limit)),
                                  temperature=max(0.0, temperature))  # fmt: skip


@dataclass(frozen=True)
class Contender:
    """One side of the arena as recorded: a display name, the repo id (or folder) and its revision."""

    name: str
    id: str
    revision: str | None

    def record(self) -> str:
        """``id@revision`` (or the id alone): what a vote names as ``model_a`` / ``model_b``."""
        return f"{self.id}@{self.revision}" if self.revision else self.id


def contenders(served: ServedModel) -> dict[str, Contender]:
    """Adapter name (:data:`SILKIE`, :data:`BASE`) → the model it stands for."""
    return {SILKIE: Contender("Silkie", str(served.adapter_id), served.adapter_revision),
            BASE: Contender("Base", served.model_id, served.model_revision)}  # fmt: skip
