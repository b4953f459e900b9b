"""Recording votes: one JSON line per vote, appended under the scheduler's lock to a per-process
``votes-<uuid>.jsonl``, each image stored once by sha256; ``huggingface_hub.CommitScheduler`` pushes the folder to a
dataset repo, **private** unless ``public_votes``. Without a repo, a token or permission the votes stay on local
disk, and :func:`privacy_notice` tells the visitor which, before the first vote. Reading them back is
:mod:`vlfeedback_kit.eval.arena.votes`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlfeedback_kit.eval.arena.config import ArenaConfig, Contender
from vlfeedback_kit.eval.arena.votes import read_votes
from vlfeedback_kit.files import safe_name, write_bytes
from vlfeedback_kit.serving import GenerationSettings

logger = logging.getLogger(__name__)


VOTES = {"a": "model_a", "b": "model_b", "tie": "tie", "bothbad": "tie (bothbad)"}
"""Vote button → recorded winner (FastChat's names, as :data:`vlfeedback_kit.eval.pairwise.WINNERS`)."""

IDENTITY_WORDS: tuple[str, ...] = ("silkie", "qwen", "alibaba", "vlfeedback", "tongyi", "llava")
"""Words by which an answer may name its model; such battles are flagged and left off the board (FastChat #1210)."""


def names_model(answer: str, extra_words: Sequence[str] = ()) -> bool:
    """Whether an answer names a model (identity words), which would unblind the battle."""
    words = [w.lower() for w in (*IDENTITY_WORDS, *extra_words) if w]
    text = answer.lower()
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in words)


def image_sha256(image: Any) -> tuple[str, bytes]:
    """The sha256 of the image's PNG encoding, and those bytes (one stored file per distinct image)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def kit_version() -> str:
    from vlfeedback_kit import __version__

    return __version__


def vote_record(
    *,
    battle_id: str,
    mode: str,
    model_a: Contender,
    model_b: Contender,
    vote: str,
    voter: str,
    prompt: str,
    answer_a: str,
    answer_b: str,
    settings: GenerationSettings,
    image_sha256: str,
    voter_id_survives_restart: bool = False,
    now: float | None = None,
) -> dict:
    """One vote as stored: what was shown, what was chosen, by which anonymous voter (no IP, no token; the image by
    its hash). ``voter_id_survives_restart`` is False when the voter key was made at start (no
    ``ARENA_VOTER_SECRET``): the same visitor then has a new id after a restart."""
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {', '.join(VOTES)}, not {vote!r}")
    leak = names_model(answer_a) or names_model(answer_b)
    return {
        "tstamp": round(time.time() if now is None else now, 3),
        "type": "vote",
        "battle_id": battle_id,
        "mode": mode,
        "model_a": model_a.record(),
        "model_b": model_b.record(),
        "model_a_name": model_a.name,
        "model_b_name": model_b.name,
        "winner": VOTES[vote],
        "voter": voter,
        "voter_id_survives_restart": voter_id_survives_restart,
        "prompt": prompt,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "gen_params": settings.to_dict(),
        "image_sha256": image_sha256,
        "names_model": leak,
        "kit_version": kit_version(),
    }


DATASET_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.jsonl
---
# Silkie vs base: arena votes

One JSON line per vote from the Silkie-vs-base Space (blind battles and named side-by-side), written by
`vlfeedback_kit.eval.arena`. **Each vote holds the visitor's prompt and uploaded image**, both answers and the vote,
with a random voter id (no account, no IP address, no token): keep this repo private unless the Space was
published with `--public-votes` and tells its visitors so. Images are stored once under `images/<sha256>.png`; a
vote names its image by `image_sha256`. `voter_id_survives_restart: false` marks votes whose voter ids were made
with a key generated at start (no `ARENA_VOTER_SECRET`), so one visitor may appear under several ids. Votes whose
answers name a model (`names_model`) are left off the leaderboard.
"""


def token_available() -> bool:
    """Whether huggingface_hub has a token to write with (``HF_TOKEN``, a Space secret, or a stored login)."""
    from huggingface_hub import get_token

    return get_token() is not None


class VoteStore:
    """Votes as JSON lines in ``folder/data/votes-<uuid>.jsonl`` (one file per process), images in
    ``folder/images/``; with ``repo_id`` a ``CommitScheduler`` pushes the folder to that dataset repo.

    The repo is created **private** unless ``public``, and votes are never pushed to a repo that is public unless
    ``public``: they hold each visitor's prompt and image. Without a token (``HF_TOKEN``) nothing is pushed: the votes
    stay in ``folder``, lost when a Space restarts, and :meth:`where` and the log say so. A push that fails (Hub down,
    5xx) is retried at the next tick with every vote still on disk; a Hub that is down at start-up is tried again
    with the next vote (at most every ``retry_seconds``) while the votes stay local; a file is only ever appended to,
    so a ``kill -9`` loses at most the line being written. Votes pushed by earlier processes are read from the repo
    at start-up, so the board survives restarts."""

    def __init__(self, folder: str | Path, repo_id: str | None = None, every_minutes: float = 5.0,
                 public: bool = False, retry_seconds: float = 60.0) -> None:  # fmt: skip
        self.folder = Path(folder)
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        (self.folder / "images").mkdir(exist_ok=True)
        readme = self.folder / "README.md"
        if not readme.exists():
            readme.write_text(DATASET_README, encoding="utf-8")
        self.path = self.folder / "data" / f"votes-{uuid.uuid4()}.jsonl"
        self.repo_id = repo_id
        self.public = public
        self.every_minutes = every_minutes
        self.scheduler = None
        self.private_repo = not public
        """Whether the repo is private (as found on the Hub, or as it will be created)."""
        self.kept_local: str | None = None if repo_id else "no votes dataset is configured (ARENA_VOTES_REPO)"
        """Why votes are not pushed to a repo at all (None when they are, or will be once the Hub answers)."""
        self.earlier: list[dict] = []
        self._lock = threading.Lock()
        self._retry_seconds = retry_seconds
        self._last_try = -math.inf
        if repo_id and not token_available():
            self.kept_local = (f"{repo_id} is configured but there is no write token (the Space secret HF_TOKEN), "
                               "so nothing can be pushed")  # fmt: skip
        if repo_id and self.kept_local is None:
            self._connect()
        if self.kept_local is not None:
            logger.warning("votes are kept only in %s on this machine's disk and are lost when it restarts: %s",
                           self.folder, self.kept_local)  # fmt: skip

    def _connect(self) -> None:
        """Check the repo's visibility, start the CommitScheduler (it creates the repo, private unless ``public``)
        and read earlier votes; if the Hub does not answer, stay local and try again later."""
        from huggingface_hub import CommitScheduler, HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        self._last_try = time.monotonic()
        try:
            try:
                self.private_repo = bool(HfApi().repo_info(self.repo_id, repo_type="dataset").private)
            except RepositoryNotFoundError:
                self.private_repo = not self.public
            if not self.private_repo and not self.public:
                self.kept_local = (
                    f"the dataset {self.repo_id} is public and ARENA_PUBLIC_VOTES is not set; "
                    "votes hold each visitor's prompt and image, so they are not published there"
                )
                return
            self.scheduler = CommitScheduler(repo_id=self.repo_id, repo_type="dataset", folder_path=self.folder,
                                             every=self.every_minutes, private=not self.public)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any Hub failure: keep the votes local, try again later
            logger.warning("votes stay local for now, the Hub did not answer: %s", type(err).__name__)
            return
        try:
            self.earlier = read_votes(self.repo_id)
        except Exception as err:  # noqa: BLE001 - the board then starts from this folder's votes only
            logger.warning("could not read earlier votes from %s: %s", self.repo_id, type(err).__name__)

    def where(self) -> str:
        """Where the votes go, as the page tells visitors: the repo and whether it is public, or local disk and why."""
        if self.kept_local is not None:
            return f"kept only on this server's disk, and **lost when it restarts**: {self.kept_local}"
        if self.private_repo:
            return (f"pushed every {self.every_minutes:g} minutes to the **private** Hub dataset `{self.repo_id}`, "
                    "readable only by the people who run this Space")  # fmt: skip
        return (f"pushed every {self.every_minutes:g} minutes to the **public** Hub dataset `{self.repo_id}`: "
                "**anyone can read and download them**")  # fmt: skip

    @property
    def lock(self) -> threading.Lock:
        return self.scheduler.lock if self.scheduler is not None else self._lock

    def add(self, record: dict, image_png: bytes | None = None) -> None:
        """Append one vote (and store its image once, by sha256) under the scheduler's lock."""
        with self.lock:
            if image_png is not None:
                image_path = self.folder / "images" / f"{safe_name(record['image_sha256'], 'image_sha256')}.png"
                if not image_path.exists():
                    write_bytes(image_path, image_png)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        retry = time.monotonic() - self._last_try >= self._retry_seconds
        if self.repo_id and self.kept_local is None and self.scheduler is None and retry:
            self._connect()

    def push(self) -> None:
        """Push now (and wait); raises what the Hub answered. A no-op without a repo."""
        if self.scheduler is not None:
            self.scheduler.trigger().result()

    def votes(self) -> list[dict]:
        """Every vote: the repo's from before this process started, and the local folder's (once per battle)."""
        with self.lock:
            local = read_votes(self.folder)
        seen = {v.get("battle_id") for v in local}
        return [v for v in self.earlier if v.get("battle_id") not in seen] + local

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()


def privacy_notice(store: VoteStore, voter_id_survives_restart: bool, config: ArenaConfig) -> str:
    """What a vote stores, where, and whether it is public: shown on the page above every battle (before the first
    vote), from the store's actual state."""
    voter = ("a random voter id kept in your browser" if voter_id_survives_restart else
             "a random voter id kept in your browser (new after each restart of this Space: it has no "
             "`ARENA_VOTER_SECRET`)")  # fmt: skip
    return (f"**What a vote stores.** Asking stores nothing; when you **vote**, your question, your uploaded image, "
            f"both answers and your vote are saved with {voter}: no account, no IP address, no token. Votes are "
            f"{store.where()}. Uploads sit in the server's temporary cache for at most two hours. Requests are "
            f"limited to {config.battles_per_minute} battles and {config.votes_per_minute} votes a minute per "
            "session and per network address (hashed in memory, never stored). Don't upload what you would not "
            "want stored.")  # fmt: skip
