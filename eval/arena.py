"""The Silkie-vs-base arena's kit side: configuration, two-row streaming, limits, vote records and the board.

The Space (``spaces/silkie-vs-base/app.py``) is UI wiring only; everything it decides lives here, as plain
functions and small classes that tests call directly:

- :func:`stream_pair` streams both sides of one battle from **one** batched ``generate`` (PEFT ``adapter_names``,
  adapter on for Silkie, off for the base) through :class:`PairStreamer` — ``TextIteratorStreamer`` refuses batch 2;
- :class:`Limits` and :class:`VisitorLimiter` turn bad input and too many requests into one-line messages (the UI
  raises them as ``gr.Error``); rates are counted per gradio session and per client address, hashed in memory only;
- :class:`VoteStore` appends one JSON line per vote under the scheduler's lock to a per-process ``votes-<uuid>.jsonl``
  and stores each image once by sha256; ``huggingface_hub.CommitScheduler`` pushes the folder to a dataset repo,
  **private** unless ``public_votes``; without a repo, a token or permission the votes stay on local disk, and
  :func:`privacy_notice` tells the visitor which, before the first vote;
- :func:`board` is the leaderboard (:mod:`vlfeedback_kit.eval.pairwise`), hidden below a minimum number of votes.

Configuration comes from the environment (Space variables and secrets), see :meth:`ArenaConfig.from_env`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import queue
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.pairwise import MIN_BATTLES, Battle, PairwiseSummary, summarize_battles
from vlfeedback_kit.files import UnsafeName, inside, safe_name, write_bytes
from vlfeedback_kit.serving import (
    BASE,
    SILKIE,
    GenerationSettings,
    ServedModel,
    generate_from_inputs,
    repeated_inputs,
    row_routes,
)

logger = logging.getLogger(__name__)

VOTES = {"a": "model_a", "b": "model_b", "tie": "tie", "bothbad": "tie (bothbad)"}
"""Vote button → recorded winner (FastChat's names, as :data:`vlfeedback_kit.eval.pairwise.WINNERS`)."""

IDENTITY_WORDS: tuple[str, ...] = ("silkie", "qwen", "alibaba", "vlfeedback", "tongyi", "llava")
"""Words by which an answer may name its model; such battles are flagged and left off the board (FastChat #1210)."""

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


class PairStreamer:
    """A ``transformers`` streamer for batch 2: yields the decoded text of both rows after every generated token."""

    def __init__(self, tokenizer: Any, timeout: float | None = None) -> None:
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.rows: list[list[int]] = [[], []]
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt ids
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1).tolist()
        for row, new in zip(self.rows, tokens):
            row.extend(new)
        self.queue.put(tuple(self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in self.rows))

    def end(self) -> None:
        self.queue.put(None)

    def fail(self, error: BaseException) -> None:
        self.queue.put(error)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        while (item := self.queue.get(timeout=self.timeout)) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


def stream_pair(
    served: ServedModel,
    image: Any,
    question: str,
    adapters: Sequence[str],
    settings: GenerationSettings,
    max_time: float | None = None,
) -> Iterator[tuple[str, str]]:
    """Both answers to one prompt, growing together, from one batched ``generate`` (row i uses ``adapters[i]``).

    Yields ``(answer_0, answer_1)`` after every token; the last pair is the final answers."""

    if len(adapters) != 2:
        raise ValueError("a battle streams exactly two rows")
    names = row_routes(served, adapters)  # checked here, not in the generating thread
    inputs, kwargs = repeated_inputs(served, [(image, question)], 2)  # one image, prepared and encoded once
    if max_time:
        kwargs["max_time"] = max_time
    streamer = PairStreamer(served.processor.tokenizer, timeout=(max_time or 600) + 60)

    def run() -> None:
        try:
            generate_from_inputs(served, inputs, names, settings, streamer, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            streamer.fail(err)

    thread = threading.Thread(target=run, name="arena-generate", daemon=True)
    thread.start()
    last = ("", "")
    for last in streamer:
        yield last
    thread.join()
    if last == ("", ""):
        yield last


class LimitError(ValueError):
    """An input or a request rate outside the arena's limits; the message is shown to the visitor as is."""


@dataclass(frozen=True)
class Limits:
    """Input limits of one battle."""

    max_image_bytes: int
    max_image_pixels: int
    max_prompt_chars: int

    @classmethod
    def of(cls, config: ArenaConfig) -> Limits:
        return cls(config.max_image_bytes, config.max_image_pixels, config.max_prompt_chars)

    def prompt(self, image_path: str | Path | None, question: str | None) -> tuple[Any, str]:
        """The RGB image and the stripped question of an upload, or :class:`LimitError` naming the limit broken.

        Bytes are checked before the file is opened and pixels before it is decoded (no decompression bombs)."""
        from PIL import Image, UnidentifiedImageError

        if not image_path:
            raise LimitError("Upload an image first: every battle is about one image.")
        question = (question or "").strip()
        if not question:
            raise LimitError("Type a question about the image.")
        if len(question) > self.max_prompt_chars:
            raise LimitError(f"The question is {len(question)} characters long; the limit is {self.max_prompt_chars}.")
        size = os.path.getsize(image_path)
        if size > self.max_image_bytes:
            raise LimitError(f"The image is {size / 2**20:.1f} MiB; the limit is "
                             f"{self.max_image_bytes / 2**20:.1f} MiB.")  # fmt: skip
        try:
            with Image.open(image_path) as opened:
                width, height = opened.size
                if width * height > self.max_image_pixels:
                    raise LimitError(f"The image has {width}×{height} pixels; the limit is "
                                     f"{self.max_image_pixels:,} pixels.")  # fmt: skip
                return opened.convert("RGB"), question
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as err:
            raise LimitError("That file is not an image that can be read (PNG, JPEG, WebP, GIF…).") from err


class RateLimiter:
    """At most ``per_minute`` events per key in any sliding 60 s window (thread-safe, in memory only)."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str, what: str) -> None:
        """Count one event for ``key``, or raise :class:`LimitError` when it would exceed the rate."""
        self.hit_all([(key, self.per_minute)], what)

    def hit_all(self, keys: Sequence[tuple[str, int]], what: str) -> None:
        """Count one event for every ``(key, per_minute)`` when none is at its limit; otherwise count nothing and
        raise :class:`LimitError` saying to slow down and for how long."""
        now = self.clock()
        with self._lock:
            if len(self._events) > 10_000:  # forget keys with no event in the window (memory stays bounded)
                self._events = defaultdict(deque, {k: v for k, v in self._events.items() if v and now - v[-1] < 60})
            waits = []
            for key, per_minute in keys:
                events = self._events[key]
                while events and now - events[0] >= 60.0:
                    events.popleft()
                if len(events) >= per_minute:
                    waits.append((60.0 - (now - events[0]), per_minute))
            if waits:
                wait, per_minute = max(waits)
                raise LimitError(f"Slow down: at most {per_minute} {what} a minute. Try again in {wait:.0f} s.")
            for key, _ in keys:
                self._events[key].append(now)


def client_address(request: Any, proxy_hops: int = 0) -> str:
    """The address a request came from: the ``X-Forwarded-For`` entry ``proxy_hops`` from the right (the one the
    nearest trusted proxy wrote, which the client cannot choose), or the connection's address."""
    forwarded = [part.strip() for part in (request.headers.get("x-forwarded-for") or "").split(",") if part.strip()]
    if proxy_hops > 0 and len(forwarded) >= proxy_hops:
        return forwarded[-proxy_hops]
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"


class VisitorLimiter:
    """A rate per visitor, keyed on what the client cannot choose freely: gradio's session, and its address, which
    is hashed with a key made at start and kept in memory only (never stored, never logged)."""

    def __init__(self, per_minute: int, clients_per_address: int, proxy_hops: int = 0,
                 clock: Any = time.monotonic) -> None:  # fmt: skip
        self.rate = RateLimiter(per_minute, clock)
        self.per_address = per_minute * max(1, clients_per_address)
        self.proxy_hops = proxy_hops
        self._salt = secrets.token_bytes(16)

    def keys(self, request: Any) -> list[tuple[str, int]]:
        """``(key, per_minute)`` of the request's session and address."""
        address = hashlib.sha256(self._salt + client_address(request, self.proxy_hops).encode()).hexdigest()[:32]
        session = getattr(request, "session_hash", None) or f"no-session:{address}"
        return [(f"session:{session}", self.rate.per_minute), (f"address:{address}", self.per_address)]

    def hit(self, request: Any, what: str) -> None:
        """Count one request, or raise :class:`LimitError` ("Slow down: …") when the session or address is over."""
        self.rate.hit_all(self.keys(request), what)


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


def _vote_lines(folder: Path, base: Path | None = None) -> Iterator[tuple[Path, int, dict]]:
    """``(file, line number, vote)`` for every vote in ``folder``'s ``data/*.jsonl`` (or ``*.jsonl``); a file that
    resolves outside ``base`` (default ``folder``; a symlink out) is an UnsafeName, a torn last line is skipped."""
    for path in sorted(folder.glob("data/*.jsonl")) or sorted(folder.glob("*.jsonl")):
        real = inside(base or folder, path, what="votes file")
        for number, line in enumerate(real.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield path, number, json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)


def _hub_snapshot(repo_id: str, revision: str | None = None, patterns: list[str] | None = None) -> tuple[Path, Path]:
    """A votes repo downloaded to the HF cache: its snapshot folder and the repo's cache folder, under which the
    snapshot's files (links into ``blobs/``) must resolve."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
    return folder, folder.parent.parent


def read_votes(source: str | Path, revision: str | None = None) -> list[dict]:
    """Votes from a votes folder (``data/*.jsonl``) or a Hub dataset id; a torn last line (``kill -9``) is skipped."""
    folder, base = Path(source), None
    if not folder.exists():
        folder, base = _hub_snapshot(str(source), revision, ["data/*.jsonl"])
    return [vote for _, _, vote in _vote_lines(folder, base)]


@dataclass
class Board:
    """The leaderboard: Silkie against its base, or the reason its ratings are hidden."""

    summary: PairwiseSummary | None
    excluded: int
    """Votes left out because an answer named its model."""
    note: str = ""
    rows: list[list[Any]] = field(default_factory=list)


BOARD_HEADERS = ["Silkie vs base", "votes", "Silkie wins", "ties", "base wins", "both bad", "tie rate",
                 "win rate (ties ½)", "95% CI", "Elo gap (BT)", "95% CI"]  # fmt: skip


def board(
    votes: Sequence[dict], silkie: Contender, base: Contender, min_votes: int = MIN_BATTLES, rounds: int = 1000
) -> Board:
    """Win rate (ties as half), n, tie and both-bad rates, the Bradley–Terry gap with bootstrap 95% CIs of Silkie
    against its base, from the blind votes that compare exactly these two models and name neither (arena rules:
    named side-by-side votes and unblinded battles are kept in the data but not rated)."""
    ids = {silkie.record(), base.record()}
    relevant = [v for v in votes if {v.get("model_a"), v.get("model_b")} == ids and v.get("mode") == "battle"]
    counted = [v for v in relevant if not v.get("names_model")]
    excluded = len(relevant) - len(counted)
    if not counted:
        return Board(None, excluded, f"No votes yet. Ratings are shown from {min_votes} votes on.")
    battles = [Battle(v["model_a"], v["model_b"], v["winner"]) for v in counted]
    summary = summarize_battles(battles, silkie.record(), base.record(), rounds=rounds, min_battles=min_votes)
    if summary.hidden:
        rates = ["hidden"] * 4
        note = f"Ratings hidden: {summary.hidden} (an unregularised fit on a handful of votes swings by ±1800 Elo)."
    else:
        low, high = summary.win_rate_ci
        gap_low, gap_high = summary.elo_gap_ci
        rates = [f"{summary.win_rate:.1%}", f"[{low:.1%}, {high:.1%}]", f"{summary.elo_gap:+.0f}",
                 f"[{gap_low:+.0f}, {gap_high:+.0f}]"]  # fmt: skip
        note = f"{summary.n} votes; Silkie against its base, ties counted as half a win."
    note += f" Silkie: `{silkie.record()}`; base: `{base.record()}`."
    if excluded:
        note += f" {excluded} vote{'s' if excluded != 1 else ''} left out: an answer named its model."
    row = [f"{silkie.name} vs {base.name}", summary.n, summary.wins, summary.ties - summary.both_bad, summary.losses,
           summary.both_bad, f"{summary.tie_rate:.1%}", *rates]  # fmt: skip
    return Board(summary, excluded, note, [row])


HUMAN_PREFERENCE = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
"""A vote's winner as ``vlfeedback agreement`` reads a human label (both bad is a tie)."""


def is_votes_source(source: str | Path) -> bool:
    """Whether ``source`` is a votes folder (``data/votes-*.jsonl``) or a Hub dataset id (no such local path)."""
    path = Path(source)
    if path.is_dir():
        return any(path.glob("data/votes-*.jsonl"))
    return not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) is not None


def vote_labels(votes: Sequence[dict]) -> list[dict]:
    """The blind votes as human pairwise labels (``id`` = battle id, models as shown, ``preferred``), identity leaks
    left out; what ``vlfeedback agreement --human VOTES`` reads."""
    return [{"id": v["battle_id"], "model_a": v["model_a"], "model_b": v["model_b"],
             "preferred": HUMAN_PREFERENCE[v["winner"]], "aspect": "overall"}
            for v in votes if not v.get("names_model") and v.get("mode") == "battle"]  # fmt: skip


def votes_to_items(source: str | Path, out: Path) -> int:
    """Write the voted battles in the pipeline's release layout (``responses.jsonl`` + ``merged_images/<id>.jpg``)
    so ``vlfeedback annotate`` can judge the same answers the voters saw; returns the number of rows.

    A votes repo is data, not a path: a ``battle_id`` must be a plain file name and an ``image_sha256`` a sha256,
    and each file read must resolve inside the votes folder (or, for a Hub id, its cache folder). Every vote is
    checked before anything is written; a bad one is a UserError naming its file and line."""
    from vlfeedback_kit.builders.pipeline.layout import LayoutWriter

    folder, base = Path(source), None
    if not folder.exists():
        folder, base = _hub_snapshot(str(source))
    rows = []
    try:
        for path, number, vote in _vote_lines(folder, base):
            if vote.get("names_model") or vote.get("mode") != "battle":
                continue
            try:
                battle_id = safe_name(vote.get("battle_id"), "battle_id")
                sha = vote.get("image_sha256")
                if not isinstance(sha, str) or re.fullmatch(r"[0-9a-f]{64}", sha) is None:
                    raise UnsafeName(f"image_sha256 {sha!r} is not a sha256 (64 lowercase hex digits)")
                image = inside(base or folder, folder / "images" / f"{sha}.png", what="image")
            except UnsafeName as err:
                raise UserError(
                    f"{source}: {path.relative_to(folder)} line {number}: {err}; this votes folder "
                    "was not written by the arena or was altered: fix or drop that vote"
                ) from None
            if image.is_file():
                rows.append((vote, battle_id, image))
    except UnsafeName as err:  # a votes file that is a link out of the folder
        raise UserError(f"{source}: {err}; votes files must be inside the votes folder") from None
    writer = LayoutWriter(out, "responses.jsonl")
    for vote, battle_id, image in rows:
        writer.add({"id": battle_id, "prompt": vote["prompt"], "models": [vote["model_a"], vote["model_b"]],
                    "completions": [{"model": vote["model_a"], "response": vote["answer_a"]},
                                    {"model": vote["model_b"], "response": vote["answer_b"]}]},
                   image.read_bytes())  # fmt: skip
    writer.close()
    return len(rows)
