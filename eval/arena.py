"""The Silkie-vs-base arena's kit side: configuration, two-row streaming, limits, vote records and the board.

The Space (``spaces/silkie-vs-base/app.py``) is UI wiring only; everything it decides lives here, as plain
functions and small classes that tests call directly:

- :func:`stream_pair` streams both sides of one battle from **one** batched ``generate`` (PEFT ``adapter_names``,
  adapter on for Silkie, off for the base) through :class:`PairStreamer` — ``TextIteratorStreamer`` refuses batch 2;
- :class:`Limits` and :class:`RateLimiter` turn bad input into one-line messages (the UI raises them as ``gr.Error``);
- :class:`VoteStore` appends one JSON line per vote under the scheduler's lock to a per-process ``votes-<uuid>.jsonl``
  and stores each image once by sha256; ``huggingface_hub.CommitScheduler`` pushes the folder to a dataset repo,
  or the votes stay local when no repo is configured;
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
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlfeedback_kit.eval.pairwise import MIN_BATTLES, Battle, PairwiseSummary, summarize_battles
from vlfeedback_kit.eval.serving import (
    BASE,
    SILKIE,
    GenerationSettings,
    ServedModel,
    generate_from_inputs,
    twice_over,
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
    votes_dir: str = "arena-votes"
    push_every_minutes: float = 5.0
    voter_secret: str = "vlfeedback-arena-local"
    """Encrypts the voter id in the browser; a Space secret (``ARENA_VOTER_SECRET``) keeps ids across restarts."""
    max_new_tokens: int = 128
    max_new_tokens_limit: int = 512
    temperature: float = 0.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    battles_per_minute: int = 6
    votes_per_minute: int = 12
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
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(f"ARENA_{spec.name.upper()}")
            if raw is None or raw == "":
                continue
            default = getattr(cls, spec.name)
            kind = type(default) if default is not None else str
            values[spec.name] = kind(raw) if kind in (int, float) else raw
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
    if not served.has_adapter and any(name != BASE for name in adapters):
        raise ValueError("adapter rows asked of a model loaded without an adapter")
    inputs, kwargs = twice_over(served, [(image, question)])  # one image, prepared and encoded once for both rows
    if max_time:
        kwargs["max_time"] = max_time
    streamer = PairStreamer(served.processor.tokenizer, timeout=(max_time or 600) + 60)
    names = list(adapters) if served.has_adapter else None

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
    """At most ``per_minute`` events per key in any sliding 60 s window (thread-safe, in memory)."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str, what: str) -> None:
        """Count one event for ``key``, or raise :class:`LimitError` when it would exceed the rate."""
        now = self.clock()
        with self._lock:
            events = self._events[key]
            while events and now - events[0] >= 60.0:
                events.popleft()
            if len(events) >= self.per_minute:
                wait = 60.0 - (now - events[0])
                raise LimitError(f"Too many {what}: at most {self.per_minute} a minute. Try again in {wait:.0f} s.")
            events.append(now)


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
    now: float | None = None,
) -> dict:
    """One vote as stored: what was shown, what was chosen, by which anonymous voter (no IP, no token, no image)."""
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
`vlfeedback_kit.eval.arena`. Images are stored once under `images/<sha256>.png`; a vote names its image by
`image_sha256`. Votes whose answers name a model (`names_model`) are left off the leaderboard.
"""


class VoteStore:
    """Votes as JSON lines in ``folder/data/votes-<uuid>.jsonl`` (one file per process), images in
    ``folder/images/``; with ``repo_id`` a ``CommitScheduler`` pushes the folder to that dataset repo.

    A push that fails (Hub down, 5xx) is retried at the next tick with every vote still on disk; a Hub that is
    down at start-up is tried again with the next vote (at most every ``retry_seconds``) while the votes stay local;
    a file is only ever appended to, so a ``kill -9`` loses at most the line being written. Votes pushed by earlier
    processes are read from the repo at start-up, so the board survives restarts."""

    def __init__(self, folder: str | Path, repo_id: str | None = None, every_minutes: float = 5.0,
                 private: bool | None = None, retry_seconds: float = 60.0) -> None:  # fmt: skip
        self.folder = Path(folder)
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        (self.folder / "images").mkdir(exist_ok=True)
        readme = self.folder / "README.md"
        if not readme.exists():
            readme.write_text(DATASET_README, encoding="utf-8")
        self.path = self.folder / "data" / f"votes-{uuid.uuid4()}.jsonl"
        self.repo_id = repo_id
        self.scheduler = None
        self.earlier: list[dict] = []
        self._lock = threading.Lock()
        self._scheduler_args = {"every": every_minutes, "private": private}
        self._retry_seconds = retry_seconds
        self._last_try = -math.inf
        if repo_id:
            self._connect()

    def _connect(self) -> None:
        """Start the CommitScheduler (it creates the repo) and read earlier votes; on failure, stay local."""
        from huggingface_hub import CommitScheduler

        self._last_try = time.monotonic()
        try:
            self.scheduler = CommitScheduler(repo_id=self.repo_id, repo_type="dataset", folder_path=self.folder,
                                             **self._scheduler_args)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any Hub failure: keep the votes local, try again later
            logger.warning("votes stay local for now, the Hub did not answer: %s", type(err).__name__)
            return
        try:
            self.earlier = read_votes(self.repo_id)
        except Exception as err:  # noqa: BLE001 - the board then starts from this folder's votes only
            logger.warning("could not read earlier votes from %s: %s", self.repo_id, type(err).__name__)

    @property
    def lock(self) -> threading.Lock:
        return self.scheduler.lock if self.scheduler is not None else self._lock

    def add(self, record: dict, image_png: bytes | None = None) -> None:
        """Append one vote (and store its image once, by sha256) under the scheduler's lock."""
        with self.lock:
            if image_png is not None:
                image_path = self.folder / "images" / f"{record['image_sha256']}.png"
                if not image_path.exists():
                    image_path.write_bytes(image_png)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        if self.repo_id and self.scheduler is None and time.monotonic() - self._last_try >= self._retry_seconds:
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


def read_votes(source: str | Path, revision: str | None = None) -> list[dict]:
    """Votes from a votes folder (``data/*.jsonl``) or a Hub dataset id; a torn last line (``kill -9``) is skipped."""
    folder = Path(source)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(source), repo_type="dataset", revision=revision,
                                        allow_patterns=["data/*.jsonl"]))  # fmt: skip
    records = []
    for path in sorted(folder.glob("data/*.jsonl")) or sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)
    return records


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
    so ``vlfeedback annotate`` can judge the same answers the voters saw; returns the number of rows."""
    from vlfeedback_kit.builders.pipeline.layout import LayoutWriter

    folder = Path(source)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(source), repo_type="dataset"))
    writer = LayoutWriter(out, "responses.jsonl")
    count = 0
    for vote in read_votes(folder):
        image = folder / "images" / f"{vote['image_sha256']}.png"
        if vote.get("names_model") or vote.get("mode") != "battle" or not image.is_file():
            continue
        writer.add({"id": vote["battle_id"], "prompt": vote["prompt"], "models": [vote["model_a"], vote["model_b"]],
                    "completions": [{"model": vote["model_a"], "response": vote["answer_a"]},
                                    {"model": vote["model_b"], "response": vote["answer_b"]}]},
                   image.read_bytes())  # fmt: skip
        count += 1
    writer.close()
    return count
