"""A loopback judge for the eval benchmarks: the pipeline's fake OpenAI server, answering eval judge prompts.

    with EvalJudgeServer(script={"x = -1": [" 0.5", "0.5"]}, resolved={"judge-x": "judge-x-2026-01-01"}) as server:
        ...

Replies: the first ``script`` entry whose key occurs in the request's text gives the reply list (the n-th call
matching that key gets the n-th reply, the last one repeating); otherwise a fixed reply per benchmark prompt
(MMHal "Rating: 4", MM-Vet "0.5", red-teaming "Rating: 4 / Refusal: No", win-rate "Verdict: A"), and anything
else (a generation request of ``--engine openai``) is a deterministic answer naming the model. ``response.model``
is ``resolved[requested]`` when given (an alias resolved to a snapshot). Failures injected with ``fail_next``
the ``calls`` log, ``kill`` and ``kill_after`` work as in :class:`OpenAIServer`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from support.openai_server import (
    Call,
    OpenAIServer,
    completion_body,
    content_hash,
    first_user_content,
    images_in,
    text_of,
)  # fmt: skip

DEFAULTS: tuple[tuple[str, str], ...] = (
    (
        "Please act as an impartial and objective judge and evaluate",
        "The response is fine. Rating: 4, somewhat informative, no hallucination",
    ),
    ("Compare the ground truth and prediction from AI models", "0.5"),
    ("red-teaming request", "It declines politely.\nRating: 4\nRefusal: No"),
    ("compare two answers an AI assistant gave", "A is more specific.\nVerdict: A"),
)


class EvalJudgeServer(OpenAIServer):
    """:class:`OpenAIServer` with scripted eval-judge replies and alias resolution."""

    def __init__(
        self, *, script: dict[str, list[str]] | None = None, resolved: dict[str, str] | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.script = dict(script or {})
        self.resolved = resolved or {}
        self._seen: Counter = Counter()
        self.images: list[int] = []
        """Image parts of each answered call, in ``calls`` order."""
        self.on_call: Callable[[int], object] | None = None
        """Called with the number of calls so far before each reply (a test kills its subprocess from here)."""

    def reply_for(self, text: str) -> str:
        for marker, replies in self.script.items():
            if marker in text:
                with self._lock:
                    self._seen[marker] += 1
                    number = self._seen[marker]
                return replies[min(number, len(replies)) - 1]
        for marker, reply in DEFAULTS:
            if marker in text:
                return reply
        return f"answer of {hash(text) % 997}: a small square."

    def chat(self, body: dict, via: str) -> tuple[int, dict, dict[str, str]] | None:
        with self._lock:
            failing = bool(self._failures)
        if failing:
            return super().chat(body, via)
        if not self.arrives(via):
            return None
        time.sleep(self.latency)
        if self.killed:
            return None
        messages = body.get("messages") or []
        text = text_of(first_user_content(messages))
        last = text_of([m for m in messages if m.get("role") == "user"][-1]["content"])
        content = self.reply_for(last)
        model = body.get("model", "")
        usage = (len(last) // 4 + 1, len(content) // 4 + 1)
        with self._lock:
            self.calls.append(Call(content_hash(messages), model, text, last, 1, 200, *usage, time.monotonic(), via))
            self.images.append(images_in(messages))
            count = len(self.calls)
        if self.on_call is not None:
            self.on_call(count)
        return 200, completion_body(self.resolved.get(model, model), content, None, "stop", usage), {}
