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

A dead judge is never a success: :func:`preflight` checks the key and probes the endpoint before any work (a
closed port, a wrong URL, a refused key: one line, exit 2), and during a run the pipeline's ``Replicas`` stop
judging once every replica of ``--judge-base-url`` (one, or several listed) failed repeatedly (the benchmark is
then incomplete, and the CLI exits 3 naming it). ``--max-cost`` is the pipeline's reserving
:class:`~vlfeedback_kit.builders.pipeline.cost.Budget`: each call reserves its estimated cost before it is sent, so
calls in flight cannot pass the cap together.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from vlfeedback_kit.builders.pipeline.cost import Budget, Price

KEY_VERSION = 1
VIA_PREFIX = "eval:"
"""The ledger's ``via`` column holds ``eval:<response.model>`` for a judge call of this module."""
CACHE_FILE = "judge-cache.sqlite"
STOPPED_BY_JUDGE = "judge"
"""``stopped_by`` of a run the judge stopped (unreachable, a refused key): the rest is not judged."""
STOPPED_BY_COST = "--max-cost"
"""``stopped_by`` of a run the budget stopped."""


@dataclass(frozen=True)
class JudgeConfig:
    """The judge endpoint, pinned by name (no default alias), and the run's limits. ``base_url`` is one URL or the
    replicas of one deployment (a list, or comma-separated); ``concurrency`` is per replica."""

    model: str
    base_url: str | tuple[str, ...]
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    max_cost: float | None = None
    prices: Path | None = None
    timeout: float = 120.0
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UserError("--judge-concurrency must be at least 1")
        if self.max_cost is not None and self.max_cost <= 0:
            raise UserError("--max-cost must be positive")
        from vlfeedback_kit.builders.pipeline.endpoint import base_urls

        base_urls(self.base_url, "--judge-base-url")  # refused now, not after the generation

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The judge's replicas (one URL unless several were listed)."""
        from vlfeedback_kit.builders.pipeline.endpoint import base_urls

        return base_urls(self.base_url, "--judge-base-url")

    @property
    def key_flag(self) -> str:
        """The flag that names the key's variable, with the variable (for messages)."""
        return f"--judge-api-key-env ({self.api_key_env})"

    def price(self) -> Price | None:
        """The judge's price from the price table (None: unknown)."""
        from vlfeedback_kit.builders.pipeline.cost import load_prices, price_for

        return price_for(self.model, load_prices(self.prices))

    def record(self) -> dict:
        """What outputs say about the judge (the URL without credentials; never the key)."""
        from vlfeedback_kit.builders.pipeline.endpoint import redact_url

        return {"judge_model_requested": self.model,
                "judge_base_url": ", ".join(redact_url(url) for url in self.base_urls)}  # fmt: skip


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


def _with_image(body: dict, image: bytes | None) -> dict:
    if image is None:
        return body
    from vlfeedback_kit.builders.pipeline.judge import image_data_url

    messages = [dict(m) for m in body["messages"]]
    first = next(m for m in messages if m["role"] == "user")
    first["content"] = [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
                        {"type": "text", "text": first["content"]}]  # fmt: skip
    return {**body, "messages": messages}


@dataclass
class _Call:
    """One judge call about to be made: what the budget reserves for (one reservation per grading at a time)."""

    key: str
    request: dict
    image: bytes | None


def image_sizes(image: bytes | None) -> list[tuple[int, int]]:
    """The size of an attached image as the tile rule needs it (unreadable: the largest the rule counts)."""
    if image is None:
        return []
    from PIL import Image, UnidentifiedImageError

    from vlfeedback_kit.builders.pipeline.cost import LARGEST_IMAGE

    try:
        with Image.open(io.BytesIO(image)) as opened:
            return [opened.size]
    except (UnidentifiedImageError, OSError):
        return [LARGEST_IMAGE]


def call_estimate(price: Price, call: _Call) -> float:
    """USD a judge call is expected to cost at most: its text at ~4 characters a token, its image by the tile rule,
    its ``max_tokens`` of completion (what ``--max-cost`` reserves before sending it)."""
    from vlfeedback_kit.builders.pipeline.cost import call_cost, request_tokens

    return call_cost(*request_tokens(call.request, image_sizes(call.image), price), price) or 0.0


def estimate_cost(tasks: Sequence[JudgeTask], config: JudgeConfig) -> dict:
    """What judging ``tasks`` would cost at the first call each (``--dry-run``); the cost null without a price."""
    from vlfeedback_kit.builders.pipeline.cost import DEFAULT_TILES, call_cost, request_tokens, unpriced_note

    price = config.price()
    tiles = price or DEFAULT_TILES
    prompt_tokens = completion_tokens = 0
    for task in tasks:
        prompt, completion = request_tokens(task.plan([]) or {}, image_sizes(task.image), tiles)
        prompt_tokens, completion_tokens = prompt_tokens + prompt, completion_tokens + completion
    usd = call_cost(prompt_tokens, completion_tokens, price)
    return {"calls": len(tasks), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost_usd": round(usd, 6) if usd is not None else None, "priced": price is not None,
            **({} if price else {"cost_unknown": unpriced_note(config.model)})}  # fmt: skip


def preflight(config: JudgeConfig) -> str:
    """Before any work: a price when ``--max-cost`` is set, the key in its variable, and the endpoint answering
    (a closed port, a wrong URL, a refused key: a one-line UserError naming the host and the cause). Returns
    the key."""
    from vlfeedback_kit.builders.pipeline.cost import load_prices, require_price
    from vlfeedback_kit.builders.pipeline.endpoint import api_key_from_env, check_endpoint

    prices = load_prices(config.prices)  # a bad --prices file is found now, not after the generation
    if config.max_cost is not None:
        require_price(config.model, prices, "--max-cost")
    api_key = api_key_from_env(config.api_key_env, "--judge-api-key-env")
    for line in check_endpoint(config.base_urls, api_key, config.timeout, "--judge-base-url", config.key_flag):
        print(f"vlfeedback eval: {line}", file=sys.stderr)
    return api_key


def ledger_spend(caches: Iterable[Path]) -> float:
    """USD the judge ledgers at ``caches`` hold (those that exist)."""
    from vlfeedback_kit.builders.pipeline.store import Store

    spent = 0.0
    for path in caches:
        if Path(path).is_file():
            with Store(Path(path), lock=False) as store:
                spent += store.totals()[2]
    return spent


def make_budget(config: JudgeConfig, spent: float) -> Budget:
    """The ``--max-cost`` budget of a judge run that starts with ``spent`` USD in its ledgers."""
    from vlfeedback_kit.builders.pipeline.cost import Budget

    price = config.price()  # None only without --max-cost (``preflight`` requires a price), so nothing is estimated
    return Budget(config.max_cost, spent, functools.partial(call_estimate, price) if price else lambda _: 0.0)


def judge(
    tasks: Sequence[JudgeTask],
    config: JudgeConfig,
    cache_path: Path,
    benchmark: str,
    progress: bool = True,
    budget: Budget | None = None,
) -> tuple[list[Judgement], dict]:
    """Settle every task from the cache or the judge; returns the judgements (task order) and the run's stats.

    ``budget`` is the ``--max-cost`` budget shared by the benchmarks of one run (default: this cache's own, its
    ledger counted). With tasks to judge, the endpoint is probed first (``preflight``)."""
    from vlfeedback_kit.builders.pipeline.cost import unpriced_note
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
        price = config.price()
        stats: dict = {"cached": len(tasks) - len(pending), "calls": 0, "failed": 0, "cost_usd": 0.0,
                       "retries": {}, "stopped": None, "stopped_by": None}  # fmt: skip
        if pending and config.dry_run:
            stats["dry_run"] = estimate_cost([tasks[i] for i in pending], config)
            for i in pending:
                judgements[i] = Judgement(tasks[i].item_id, tasks[i].run, tasks[i].prompt_sha256, config.model,
                                          error="not judged (--dry-run)")  # fmt: skip
        elif pending:
            api_key = preflight(config)
            budget = budget or make_budget(config, store.totals()[2])
            asyncio.run(_judge_pending(tasks, pending, judgements, config, store, benchmark, stats, progress,
                                       budget, api_key))  # fmt: skip
        stats["cost_usd"] = round(stats["cost_usd"], 6) if price is not None else None
        if price is None:
            stats["cost_unknown"] = unpriced_note(config.model)
        return judgements, stats  # type: ignore[return-value]


async def _judge_pending(tasks, pending, judgements, config, store, benchmark, stats, progress, budget,
                         api_key) -> None:  # fmt: skip
    from huggingface_hub.utils import tqdm

    from vlfeedback_kit.builders.pipeline.cost import call_cost
    from vlfeedback_kit.builders.pipeline.endpoint import GaveUp, Rejected, Replicas, RetryPolicy, complete, for_each

    price = config.price()
    replicas = Replicas(config.base_urls, api_key, config.timeout, "--judge-base-url", config.concurrency)
    policy = RetryPolicy()
    bar = tqdm(total=len(pending), desc=f"judge {benchmark}", unit="item", disable=not progress)

    def retried(reason: str) -> None:
        stats["retries"][reason] = stats["retries"].get(reason, 0) + 1

    def admit(call: _Call) -> bool:
        """Reserve the call's estimate, or stop the run's intake once the budget refuses one."""
        if stats["stopped"] is None and not budget.admit(call):
            stats["stopped"], stats["stopped_by"] = f"--max-cost {config.max_cost} reached", STOPPED_BY_COST
        return stats["stopped"] is None

    async def handle(index: int) -> None:
        task = tasks[index]
        key = task_key(config.model, benchmark, task)
        history = store.history(key)
        replies = [completion.reply.content for _, completion, _ in history.calls]
        models = [via.removeprefix(VIA_PREFIX) for via in history.vias if via.startswith(VIA_PREFIX)]
        attempt = history.next_attempt
        judgement = Judgement(task.item_id, task.run, task.prompt_sha256, config.model)
        call = None
        try:
            request = task.plan(replies)
            if request is None:  # settled by calls of an earlier, interrupted run
                store.put_many([(key, task.item_id, "ok", _settled(task, replies, models))])
            while request is not None:
                call = _Call(key, request, task.image)
                if not admit(call):  # checked before every call, re-asks included
                    judgement.replies, judgement.error = replies, f"not judged ({stats['stopped']})"
                    break
                body = _with_image({"model": config.model, **request}, task.image)
                completion = await complete(replicas, body, policy, retried)
                resolved = str(completion.model or "")
                cost = call_cost(completion.prompt_tokens, completion.completion_tokens, price)
                replies.append(completion.reply.content)
                models.append(resolved)
                request = task.plan(replies)
                finish = (task.item_id, "ok", _settled(task, replies, models)) if request is None else None
                store.record(key, attempt, VIA_PREFIX + resolved, completion, cost, finish)  # one commit
                budget.settle(call, cost)
                attempt += 1
                stats["calls"] += 1
                stats["cost_usd"] += cost or 0.0
                judgement.calls_made_now += 1
            else:
                judgement.replies, judgement.judge_models_resolved = replies, models
        except (GaveUp, Rejected) as err:
            stats["failed"] += 1
            judgement.replies, judgement.error = replies, f"judge call failed: {err}"
        finally:
            if call is not None:
                budget.settle(call, 0.0)  # a call that failed or was cancelled frees its reservation
            bar.update(1)
        judgements[index] = judgement

    try:
        await for_each(pending, handle, config.concurrency * len(replicas), lambda _: stats["stopped"] is None)
    except UserError as err:  # the breaker, a refused key, a 404 mid-run: the judge stopped answering
        stats["stopped"], stats["stopped_by"] = str(err), STOPPED_BY_JUDGE
    finally:
        bar.close()
        await replicas.close()
    for index in pending:
        if judgements[index] is None:
            task = tasks[index]
            judgements[index] = Judgement(task.item_id, task.run, task.prompt_sha256, config.model,
                                          error=f"not judged ({stats['stopped']})")  # fmt: skip


def _settled(task: JudgeTask, replies: list, models: list[str]) -> dict:
    return {"replies": replies, "models": models, "prompt_sha256": task.prompt_sha256}
