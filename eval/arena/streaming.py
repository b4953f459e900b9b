"""Both sides of one battle, streamed from **one** batched ``generate`` (PEFT ``adapter_names``: adapter on for
Silkie, off for the base) through :class:`PairStreamer`: ``TextIteratorStreamer`` refuses batch 2."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from vlfeedback_kit.serving import GenerationSettings, ServedModel, generate_from_inputs, repeated_inputs, row_routes


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
