"""Judge calls for the judged benchmarks: pinned, cached on disk, never silent.

Calls go through the feedback pipeline's OpenAI-compatible machinery (``builders/pipeline/endpoint.py``: our own
retries, 429 backoff honouring ``Retry-After``, bounded concurrency; ``cost.py`` prices; ``store.py`` the SQLite
WAL ledger). Every call is committed to the cache as soon as its reply arrives, keyed by
(judge model requested, benchmark, prompt sha256, item, run index) — the resolved model is only known after a
call, so it is recorded per reply and ``scores.json`` warns when one requested name was answered by several
snapshots (an alias that moved between runs):

- a re-run makes zero calls; ``--runs 2`` after ``--runs 1`` calls only for run 2; another judge model has other
  keys, so it never reuses this one's replies;
- a grading that needs several calls (MM-Vet's re-asks) resumes from the calls already made (a ``kill -9`` loses
  only the calls in flight);
- each call's ``response.model`` (the model the endpoint resolved) is kept beside the requested name.

A task describes its calls as a function of the replies so far (:attr:`JudgeTask.plan`), so the benchmark's
official re-ask rule stays in the benchmark's module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from vlfeedback_kit.errors import UserError

KEY_VERSION = 1
VIA_PREFIX = "eval:"
"""The ledger's ``via`` column holds ``eval:<response.model>`` for a judge call of this module."""


@dataclass(frozen=True)
class JudgeConfig:
    """The judge endpoint, pinned by name (no default alias), and the run's limits."""

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    max_cost: float | None = None
    prices: Path | None = None
    timeout: float = 120.0
    dry_run: bool = False

    def record(self) -> dict:
        """What outputs say about the judge (the URL without credentials; never the key)."""
        from vlfeedback_kit.builders.pipeline.annotate import redact_url

        return {"judge_model_requested": self.model, "judge_base_url": redact_url(self.base_url)}


@dataclass
class JudgeTask:
    """One grading of one item in one run: ``plan(replies)`` is the next request body (without ``model``) or
    None once the replies settle it; ``image`` (bytes) is attached to the first user message when set."""

    item_id: str
    run: int
    prompt: str
    plan: Callable[[list[str | None]], dict | None]
    image: bytes | None = None

    @cached_property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


@dataclass
class Judgement:
    """A settled (or failed) grading: every raw reply, the models that answered, and why it failed if it did."""

    item_id: str
    run: int
    prompt_sha256: str
    judge_model_requested: str
    judge_models_resolved: list[str] = field(default_factory=list)
    replies: list[str | None] = field(default_factory=list)
    calls_made_now: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.item_id, "run": self.run, "judge_model_requested": self.judge_model_requested,
            "judge_model_resolved": self.judge_models_resolved[-1] if self.judge_models_resolved else None,
            "judge_models_resolved": self.judge_models_resolved, "prompt_sha256": self.prompt_sha256,
            "replies": self.replies, "error": self.error,
        }  # fmt: skip


def task_key(judge_model: str, benchmark: str, task: JudgeTask) -> str:
    """The cache key of a grading."""
    blob = json.dumps([KEY_VERSION, judge_model, benchmark, task.prompt_sha256, task.item_id, task.run])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Recording:
    """A client whose ``post`` keeps the response body, so ``response.model`` is seen (endpoint.complete keeps
    only the reply and usage)."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.body: dict | None = None

    async def post(self, *args, **kwargs):
        self.body = await self._client.post(*args, **kwargs)
        return self.body


def _with_image(body: dict, image: bytes | None) -> dict:
    if image is None:
        return body
    from vlfeedback_kit.builders.pipeline.judge import image_data_url

    messages = [dict(m) for m in body["messages"]]
    first = next(m for m in messages if m["role"] == "user")
    first["content"] = [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
                        {"type": "text", "text": first["content"]}]  # fmt: skip
    return {**body, "messages": messages}


def estimate_cost(tasks: Sequence[JudgeTask], config: JudgeConfig) -> dict:
    """What judging ``tasks`` would cost at the first call each (``--dry-run``): ~4 characters per token."""
    from vlfeedback_kit.builders.pipeline.cost import CHARS_PER_TOKEN, call_cost, load_prices, price_for

    price = price_for(config.model, load_prices(config.prices))
    prompt_tokens = sum(len(t.prompt) // CHARS_PER_TOKEN + 10 for t in tasks)
    completion_tokens = sum(int((t.plan([]) or {}).get("max_tokens") or 300) for t in tasks)
    return {"calls": len(tasks), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost_usd": call_cost(prompt_tokens, completion_tokens, price),
            "priced": price is not None}  # fmt: skip


def judge(
    tasks: Sequence[JudgeTask], config: JudgeConfig, cache_path: Path, benchmark: str, progress: bool = True
) -> tuple[list[Judgement], dict]:
    """Settle every task from the cache or the judge; returns the judgements (task order) and the run's stats."""
    from vlfeedback_kit.builders.pipeline.store import Store

    with Store(cache_path) as store:
        store.bind("kind", "eval judge cache", "--out")
        judgements: list[Judgement | None] = [None] * len(tasks)
        pending: list[int] = []
        for index, task in enumerate(tasks):
            cached = store.result(task_key(config.model, benchmark, task))
            if cached is not None:
                judgements[index] = Judgement(task.item_id, task.run, task.prompt_sha256, config.model,
                                              cached.data["models"], cached.data["replies"])  # fmt: skip
            else:
                pending.append(index)
        stats: dict = {"cached": len(tasks) - len(pending), "calls": 0, "failed": 0, "cost_usd": 0.0,
                       "retries": {}, "stopped": None}  # fmt: skip
        if pending and config.dry_run:
            stats["dry_run"] = estimate_cost([tasks[i] for i in pending], config)
            for i in pending:
                judgements[i] = Judgement(tasks[i].item_id, tasks[i].run, tasks[i].prompt_sha256, config.model,
                                          error="not judged (--dry-run)")  # fmt: skip
            return judgements, stats  # type: ignore[return-value]
        if pending:
            asyncio.run(_judge_pending(tasks, pending, judgements, config, store, benchmark, stats, progress))
        stats["cost_usd"] = round(stats["cost_usd"], 6)
        return judgements, stats  # type: ignore[return-value]


async def _judge_pending(tasks, pending, judgements, config, store, benchmark, stats, progress) -> None:
    from tqdm import tqdm

    from vlfeedback_kit.builders.pipeline.cost import call_cost, load_prices, price_for
    from vlfeedback_kit.builders.pipeline.endpoint import (
        GaveUp,
        Rejected,
        RetryPolicy,
        api_key_from_env,
        complete,
        make_client,
    )  # fmt: skip

    price = price_for(config.model, load_prices(config.prices))
    if config.max_cost is not None and price is None:
        raise UserError(f"--max-cost needs a price for judge {config.model!r}; pass --prices FILE with it")
    client = make_client(config.base_url, api_key_from_env(config.api_key_env), config.timeout)
    policy = RetryPolicy()
    spent = store.totals()[2]
    bar = tqdm(total=len(pending), desc=f"judge {benchmark}", unit="item", disable=not progress)

    def retried(reason: str) -> None:
        stats["retries"][reason] = stats["retries"].get(reason, 0) + 1

    def admit(_: int | None = None) -> bool:
        if config.max_cost is not None and spent + stats["cost_usd"] >= config.max_cost:
            stats["stopped"] = f"--max-cost {config.max_cost} reached"
            return False
        return True

    async def handle(index: int) -> None:
        task = tasks[index]
        key = task_key(config.model, benchmark, task)
        history = store.history(key)
        replies = [completion.reply.content for _, completion, _ in history.calls]
        models = _resolved_models(store, key) if history.calls else []
        attempt = history.next_attempt
        judgement = Judgement(task.item_id, task.run, task.prompt_sha256, config.model)
        try:
            request = task.plan(replies)
            if request is None:  # settled by calls of an earlier, interrupted run
                store.put_many([(key, task.item_id, "ok", _settled(task, replies, models))])
            while request is not None:
                if not admit():  # checked before every call: the intake runs ahead of the spending
                    judgement.replies, judgement.error = replies, f"not judged ({stats['stopped']})"
                    break
                recording = _Recording(client)
                body = _with_image({"model": config.model, **request}, task.image)
                completion = await complete(recording, body, policy, retried)
                resolved = str((recording.body or {}).get("model") or "")
                cost = call_cost(completion.prompt_tokens, completion.completion_tokens, price)
                replies.append(completion.reply.content)
                models.append(resolved)
                request = task.plan(replies)
                finish = (task.item_id, "ok", _settled(task, replies, models)) if request is None else None
                store.record(key, attempt, VIA_PREFIX + resolved, completion, cost, finish)  # one commit
                attempt += 1
                stats["calls"] += 1
                stats["cost_usd"] += cost or 0.0
                judgement.calls_made_now += 1
            else:
                judgement.replies, judgement.judge_models_resolved = replies, models
        except (GaveUp, Rejected) as err:
            stats["failed"] += 1
            judgement.replies, judgement.error = replies, f"judge call failed: {err}"
        judgements[index] = judgement
        bar.update(1)

    from vlfeedback_kit.builders.pipeline.endpoint import for_each

    try:
        await for_each(pending, handle, config.concurrency, admit)
    finally:
        bar.close()
        await client.close()
    for index in pending:
        if judgements[index] is None:
            task = tasks[index]
            judgements[index] = Judgement(task.item_id, task.run, task.prompt_sha256, config.model,
                                          error=f"not judged ({stats['stopped']})")  # fmt: skip


def _settled(task: JudgeTask, replies: list, models: list[str]) -> dict:
    return {"replies": replies, "models": models, "prompt_sha256": task.prompt_sha256}


def _resolved_models(store, key: str) -> list[str]:
    rows = store.db.execute("SELECT via FROM calls WHERE key = ? ORDER BY attempt", (key,)).fetchall()
    return [via.removeprefix(VIA_PREFIX) for (via,) in rows if via.startswith(VIA_PREFIX)]


def cache_path_for(folder: Path) -> Path:
    """Where a benchmark folder's judge cache lives."""
    return folder / "judge-cache.sqlite"
