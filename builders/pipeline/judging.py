"""The judge loops of ``annotate``: the synchronous one here, the Batch API one in ``batch`` (both built on
:class:`JudgeLoop`), with the ``--max-cost`` budget (``cost.Budget``, eval's too) they share. ``annotate`` plans
the work and hands it to one of them; neither loop imports ``annotate``, so the modules form no cycle."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlfeedback_kit.builders.pipeline.cost import Budget, Price, call_cost, estimate_tokens
from vlfeedback_kit.builders.pipeline.endpoint import (
    GaveUp,
    Rejected,
    Replicas,
    RunStats,
    complete,
    for_each,
    host_of,
)
from vlfeedback_kit.builders.pipeline.items import Planned, build_request, load, settle
from vlfeedback_kit.builders.pipeline.judge import JudgeSettings, Template, read_reply
from vlfeedback_kit.builders.pipeline.layout import StageInput
from vlfeedback_kit.builders.pipeline.store import Store
from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from huggingface_hub.utils import tqdm

    from vlfeedback_kit.builders.pipeline.annotate import AnnotateOptions

STAGE_DIR = "annotate"
MAX_COST_STOP = "--max-cost"


def planned_cost(price: Price | None, detail: str, batch: bool, planned: Planned) -> float:
    """USD one judge call for this item is expected to cost (what ``--max-cost`` reserves for it)."""
    prompt, completion = estimate_tokens(planned.prompt_chars, planned.image_size, planned.n, detail, price)
    return call_cost(prompt, completion, price, batch) or 0.0


@dataclass(frozen=True)
class JudgeJob:
    """What a judge loop (synchronous or batch) works with: the run's options, the judge, the store and the input."""

    options: AnnotateOptions
    settings: JudgeSettings
    template: Template
    store: Store
    price: Price | None
    folder: StageInput
    bar: tqdm


class JudgeLoop:
    """Base of the judge loops: the job's parts as attributes, the run's stats, and the --max-cost budget."""

    batch = False
    """Whether the loop's calls are priced at the Batch API's rates."""

    def __init__(self, job: JudgeJob) -> None:
        self.options, self.settings, self.template, self.store = job.options, job.settings, job.template, job.store
        self.price, self.folder, self.bar = job.price, job.folder, job.bar
        self.stats = RunStats(priced=self.price is not None)
        estimate = functools.partial(planned_cost, self.price, self.settings.image_detail, self.batch)
        self.budget = Budget(self.options.max_cost, self.store.totals()[2], estimate)


class Judging(JudgeLoop):
    """The synchronous (chat completions) judge loop over the items of a plan."""

    def __init__(self, job: JudgeJob) -> None:
        super().__init__(job)
        self.replicas: Replicas | None = None
        self.send_seed = True

    async def run(self, todo: list[Planned], api_key: str) -> RunStats:
        """Judge every item in ``todo`` (``--concurrency`` in flight per replica, budget permitting)."""
        started = time.perf_counter()
        options = self.options
        self.replicas = Replicas(options.base_urls, api_key, options.timeout, concurrency=options.concurrency)
        try:
            in_flight = options.concurrency * len(self.replicas)
            complete_intake = await for_each(todo, self.judge, in_flight, self.budget.admit)
        finally:
            await self.replicas.close()
        if not complete_intake:
            self.stats.stopped = f"{MAX_COST_STOP} {self.options.max_cost} reached"
        self.stats.seed_sent = self.send_seed
        self.stats.seconds = time.perf_counter() - started
        return self.stats

    async def judge(self, planned: Planned) -> None:
        """Ask the judge about one item until it is settled, or leave it pending when the endpoint keeps failing."""
        item = load(self.folder, planned)
        history = self.store.history(planned.key)
        calls, attempt = [(completion, cost) for _, completion, cost in history.calls], history.next_attempt
        try:
            while True:
                request, order = build_request(item, self.settings, self.template, [c for c, _ in calls])
                if not self.send_seed:
                    request.pop("seed", None)
                try:
                    completion = await complete(self.replicas, request, self.options.retry, self.stats.retried)
                except Rejected as err:
                    if "response_format" in request and "response_format" in str(err):
                        host = host_of(self.options.base_urls[0])
                        raise UserError(
                            f"{host} does not take --response-format json-schema ({err}); run without it"
                        ) from err
                    if "seed" not in request or "seed" not in str(err):
                        raise
                    self.send_seed = False  # the endpoint does not take a seed: ask again without it
                    continue
                cost = call_cost(completion.prompt_tokens, completion.completion_tokens, self.price)
                calls.append((completion, cost))
                finish = settle(read_reply(completion.reply, planned.n), order, calls, self.options.max_attempts)
                outcome = (planned.item_id, *finish) if finish else None
                self.store.record(planned.key, attempt, "sync", completion, cost, outcome)
                attempt += 1
                self.stats.add_call(completion.prompt_tokens, completion.completion_tokens, cost)
                self.budget.settle(planned, cost, again=not finish)
                if finish:
                    self.stats.finished[finish[0]] += 1
                    break
        except GaveUp as err:
            self.stats.pending[planned.key] = str(err)
        except Rejected as err:
            self.store.put_many([(planned.key, planned.item_id, "failed", {"reason": str(err), "attempts": 0})])
            self.stats.finished["failed"] += 1
        finally:
            self.budget.settle(planned, 0.0)
            self.bar.update(1)
            if not self.bar.disable:
                tokens = self.stats.prompt_tokens + self.stats.completion_tokens
                self.bar.set_postfix_str(f"tokens {tokens:,} ${self.budget.spent:,.2f}", refresh=False)
