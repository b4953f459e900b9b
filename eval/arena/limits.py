"""Bad input and too many requests as one-line messages (:class:`LimitError`, which the UI raises as ``gr.Error``):
input limits of one battle, and rates per gradio session and per client address (hashed, in memory only)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlfeedback_kit.eval.arena.config import ArenaConfig


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
