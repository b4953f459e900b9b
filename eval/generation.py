"""Generation: answer a benchmark's items with a model, one ``responses.jsonl`` line per item, resumable.

Each line is written (flushed and fsynced) as soon as its batch is answered; a re-run reads the file, skips the
finished items and drops a torn last line, so a ``kill -9`` loses only the batch in flight. Two engines:

- ``transformers`` (:mod:`vlfeedback_kit.serving`): the base loaded once, the adapter on; with
  ``--compare-base`` each batch mixes Silkie and base rows (PEFT ``adapter_names``), so both sides cost one model
  in memory and one ``generate`` per batch; a sampled answer is seeded by the run's seed and the item's id only;
- ``openai``: any OpenAI-compatible server (vLLM, TGI, SGLang), the image sent as a data URL; vLLM serves a base
  and its LoRA adapter as two model names (``--model`` and ``--adapter``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item

RESPONSES = "responses.jsonl"
SILKIE_LABEL, BASE_LABEL = "silkie", "base"


@dataclass(frozen=True)
class Side:
    """One label's model: what generates it (an adapter name for transformers, a model name for openai) and
    the provenance recorded with every response."""

    label: str
    route: str
    provenance: dict


def read_responses(path: Path) -> dict[str, dict]:
    """The finished lines of a responses.jsonl by id (a torn last line, from a killed run, is ignored)."""
    if not path.is_file():
        return {}
    done = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if number >= len(lines) - 1:  # the torn last line of a killed run
                break
            raise UserError(
                f"{path}:{number}: not a JSON line ({err}); fix or delete that line (a re-run "
                "regenerates the items whose lines are missing)"
            ) from err
        done[record["id"]] = record
    return done


def _truncate_torn(path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class ResponseLog:
    """An append-only responses.jsonl whose lines are durable once written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn(path)
        self.path = path
        self.done = read_responses(path)
        self._file = path.open("a", encoding="utf-8")

    def write(self, records: Sequence[dict]) -> None:
        for record in records:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.done[record["id"]] = record
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def record(item: Item, prompt: str, response: str, side: Side, settings: dict, engine: str) -> dict:
    """One responses.jsonl line."""
    return {"id": item.id, "prompt": prompt, "response": response, "label": side.label, "engine": engine,
            "generation": settings, **side.provenance}  # fmt: skip


def generate(
    items: Sequence[Item],
    prompts: Sequence[str],
    sides: Sequence[Side],
    logs: dict[str, ResponseLog],
    answer: Callable[[list[tuple[Item, str, Side]]], list[str]],
    batch_size: int,
    settings: dict,
    engine: str,
    progress: bool = True,
) -> int:
    """Answer every (item, side) not yet in its log, ``batch_size`` rows per call of ``answer``, rows of both
    sides mixed in one batch; returns how many responses were generated."""
    from huggingface_hub.utils import tqdm

    rows = [(item, prompt, side) for item, prompt in zip(items, prompts) for side in sides
            if item.id not in logs[side.label].done]  # fmt: skip
    with tqdm(total=len(rows), desc="generate", unit="response", disable=not progress or not rows) as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            answers = answer(batch)
            for side in sides:
                logs[side.label].write([record(item, prompt, text, s, settings, engine)
                                        for (item, prompt, s), text in zip(batch, answers) if s is side])  # fmt: skip
            bar.update(len(batch))
    return len(rows)


def transformers_answerer(served, settings) -> Callable[[list[tuple[Item, str, Side]]], list[str]]:
    """Batches answered in one pass for both sides' rows: items asked of Silkie and the base in the same batch go
    through :func:`~vlfeedback_kit.serving.generate_both` (each image prepared and encoded once for both), the
    other rows (a resumed run's leftovers, single-side runs) through :func:`~vlfeedback_kit.serving.generate`; each
    item samples with :func:`~vlfeedback_kit.serving.item_seed` of its id, whatever its batch."""
    from vlfeedback_kit.serving import BASE, SILKIE, generate_both, item_seed
    from vlfeedback_kit.serving import generate as serve

    def answer(batch: list[tuple[Item, str, Side]]) -> list[str]:
        answers: list[str | None] = [None] * len(batch)
        if served.has_adapter:
            rows_of: dict[str, dict[str, int]] = {}
            for index, (item, _, side) in enumerate(batch):
                rows_of.setdefault(item.id, {})[side.route] = index
            pairs = [rows for rows in rows_of.values() if set(rows) == {SILKIE, BASE}]
            if pairs:
                firsts = [batch[rows[SILKIE]] for rows in pairs]
                silkie, base = generate_both(served, [(item.image(), prompt) for item, prompt, _ in firsts], settings,
                                             [item_seed(settings.seed, item.id) for item, _, _ in firsts])
                for rows, silkie_answer, base_answer in zip(pairs, silkie, base):
                    answers[rows[SILKIE]], answers[rows[BASE]] = silkie_answer, base_answer
        rest = [i for i, text in enumerate(answers) if text is None]
        if rest:
            routes = [batch[i][2].route for i in rest] if served.has_adapter else None
            texts = serve(served, [(batch[i][0].image(), batch[i][1]) for i in rest], routes, settings,
                          seeds=[item_seed(settings.seed, batch[i][0].id) for i in rest])
            for i, text in zip(rest, texts):
                answers[i] = text
        return answers  # type: ignore[return-value]

    return answer


def openai_answerer(
    base_url: str | Sequence[str], api_key: str, settings, concurrency: int = 16, timeout: float = 300.0
) -> Callable[[list[tuple[Item, str, Side]]], list[str]]:
    """Batches answered by an OpenAI-compatible server — or the replicas of one, requests spread over them —
    ``concurrency`` requests in flight on each (a replica taken out stays out across batches until its cooldown)."""
    from vlfeedback_kit.builders.pipeline.endpoint import Replicas, RetryPolicy, base_urls, complete
    from vlfeedback_kit.builders.pipeline.judge import image_data_url

    replicas = Replicas(base_urls(base_url, "--base-url"), api_key, timeout, "--base-url", concurrency)

    async def run(batch: list[tuple[Item, str, Side]]) -> list[str]:

        async def one(item: Item, prompt: str, side: Side) -> str:
            body = {"model": side.route, "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                    "top_p": settings.top_p, "seed": settings.seed,
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(item.image_data())}},
                        {"type": "text", "text": prompt}]}]}  # fmt: skip
            completion = await complete(replicas, body, RetryPolicy())
            return (completion.reply.content or "").strip()

        try:
            return list(await asyncio.gather(*(one(*row) for row in batch)))
        finally:
            await replicas.close()

    return lambda batch: asyncio.run(run(batch))
