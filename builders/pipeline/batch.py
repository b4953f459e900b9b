"""``annotate --batch``: the OpenAI Batch API — write the requests as JSONL, upload, create, poll, ingest; resumable.

Rounds: every unfinished item goes into a batch (split at 50,000 requests or ~190 MB per file); finished batches
are ingested into the same store as synchronous calls (malformed replies are re-asked in the next round); the
loop ends when nothing is left or the budget is spent. Each request's ``custom_id`` is ``<content key>:<attempt>``,
so any batch's output can be ingested by any run over the same input.

Crash safety: the uploaded input file is recorded before ``batches.create`` and the batch id right after; a run
that finds an upload without a batch id looks the batch up by its input file before creating one. A re-run of
the same command (or ``--batch-id ID`` with a fresh store) resumes polling; nothing is submitted twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

from vlfeedback_kit.builders.pipeline.cost import call_cost
from vlfeedback_kit.builders.pipeline.endpoint import RunStats, completion_of, is_transient, make_sync_client
from vlfeedback_kit.builders.pipeline.items import Plan, Planned, build_request, load, settle
from vlfeedback_kit.builders.pipeline.judge import permutation, read_reply
from vlfeedback_kit.builders.pipeline.judging import STAGE_DIR, JudgeJob, JudgeLoop
from vlfeedback_kit.builders.pipeline.store import Batch
from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch as RemoteBatch

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000
MAX_BYTES = 190 * 1024**2
TERMINAL = ("completed", "failed", "expired", "cancelled")


def custom_id(key: str, attempt: int) -> str:
    """The Batch API id of one request: the item's content key and the attempt number."""
    return f"{key}:{attempt}"


def parse_custom_id(value: str) -> tuple[str, int]:
    """(content key, attempt) of a request id."""
    key, attempt = value.rsplit(":", 1)
    return key, int(attempt)


def chunks(lines: list[tuple[str, bytes]], max_requests: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """Consecutive groups of (custom id, JSONL line) within the Batch API's per-file limits."""
    groups: list[list[tuple[str, bytes]]] = []
    size = 0
    for line in lines:
        if not groups or len(groups[-1]) >= max_requests or size + len(line[1]) > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(line)
        size += len(line[1])
    return groups


class BatchRun(JudgeLoop):
    """One ``annotate --batch`` invocation over a plan."""

    batch = True

    def __init__(self, job: JudgeJob, work: Plan, client: OpenAI) -> None:
        super().__init__(job)
        self.client = client
        self.items = {p.key: p for p in work.unique()}
        self.transient: Counter = Counter()
        self.dir = self.options.out_dir / STAGE_DIR / "batches"

    def run(self) -> RunStats:
        """Rounds of submit → poll → ingest until every item is settled, the budget is spent, or --no-wait."""
        started = time.perf_counter()
        if self.options.batch_id:
            self.adopt(self.options.batch_id)
        while True:
            open_batches = [self.ensure_created(batch) for batch in self.store.batches()]
            if open_batches:
                finished = self.poll(open_batches)
                if not finished:
                    ids = ", ".join(b.batch_id for b in open_batches)
                    self.stats.stopped = f"batches in progress ({ids}); re-run the same command to ingest them"
                    break
                for batch, remote in finished:
                    self.ingest(batch, remote)
                continue
            if not self.submit():
                break
        self.stats.seconds = time.perf_counter() - started
        return self.stats

    def todo(self) -> list[Planned]:
        """Unfinished items that have not exhausted their transient-failure retries."""
        finished = self.store.finished()
        return [p for key, p in self.items.items() if key not in finished and key not in self.stats.pending]

    def submit(self) -> bool:
        """Write, upload and create this round's batches; False when there is nothing (affordable) left."""
        todo = self.todo()
        admitted = [p for p in todo if self.budget.admit(p)]
        if len(admitted) < len(todo):
            self.stats.stopped = f"--max-cost {self.options.max_cost} reached"
        if not admitted:
            return False
        lines = []
        for planned in admitted:
            history = self.store.history(planned.key)
            previous = [completion for _, completion, _ in history.calls]
            request, _ = build_request(load(self.folder, planned), self.settings, self.template, previous)
            request_id = custom_id(planned.key, history.next_attempt)
            body = {"custom_id": request_id, "method": "POST", "url": ENDPOINT, "body": request}
            lines.append((request_id, json.dumps(body, ensure_ascii=False).encode() + b"\n"))
        self.dir.mkdir(parents=True, exist_ok=True)
        for group in chunks(lines, MAX_REQUESTS, MAX_BYTES):
            path = self.dir / f"input-{time.time_ns()}.jsonl"
            path.write_bytes(b"".join(line for _, line in group))
            with path.open("rb") as handle:
                uploaded = self.client.files.create(file=(path.name, handle), purpose="batch")
            self.ensure_created(Batch(uploaded.id, None, [request_id for request_id, _ in group], "uploaded"))
            path.unlink()
        return True

    def ensure_created(self, batch: Batch) -> Batch:
        """The batch of a recorded upload: created now, or found by its input file after a crash."""
        if batch.batch_id is None:
            self.store.save_batch(batch)
            found = next((b for b in self.client.batches.list() if b.input_file_id == batch.input_file_id), None)
            remote = found or self.client.batches.create(
                input_file_id=batch.input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"created_by": "vlfeedback annotate", "judge_model": self.settings.model[:500]},
            )
            batch = Batch(batch.input_file_id, remote.id, batch.custom_ids, "submitted")
            self.store.save_batch(batch)
        if batch.batch_id not in self.stats.batches:
            self.stats.batches.append(batch.batch_id)
        return batch

    def adopt(self, batch_id: str) -> None:
        """``--batch-id``: take over a submitted batch (e.g. the store was lost); its file lists its requests."""
        remote = self.client.batches.retrieve(batch_id)
        if any(b.input_file_id == remote.input_file_id for b in self.store.batches(open_only=False)):
            return
        content = self.client.files.content(remote.input_file_id).text
        ids = [json.loads(line)["custom_id"] for line in content.splitlines() if line.strip()]
        self.store.save_batch(Batch(remote.input_file_id, batch_id, ids, "submitted"))

    def poll(self, batches: list[Batch]) -> list[tuple[Batch, RemoteBatch]]:
        """Wait until at least one batch has ended (once only with --no-wait); returns the ended ones."""
        while True:
            remotes = [(batch, self.client.batches.retrieve(batch.batch_id)) for batch in batches]
            ended = [(batch, remote) for batch, remote in remotes if remote.status in TERMINAL]
            if ended or self.options.no_wait:
                return ended
            counts = [remote.request_counts for _, remote in remotes if remote.request_counts]
            self.bar.set_postfix_str(
                f"{len(batches)} batch(es) running, {sum(c.completed for c in counts)}/{sum(c.total for c in counts)}"
            )
            time.sleep(self.options.poll_interval)

    def ingest(self, batch: Batch, remote: RemoteBatch) -> None:
        """Record every reply of an ended batch; requests it did not answer are retried in the next round."""
        answered: set[str] = set()
        for file_id in filter(None, (remote.output_file_id, remote.error_file_id)):
            for line in self.client.files.content(file_id).text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    answered.add(entry["custom_id"])
                    self.ingest_line(entry, remote.id)
        for request_id in set(batch.custom_ids) - answered:
            self.transient_failure(parse_custom_id(request_id)[0], f"batch {remote.status}: request not answered")
        self.store.save_batch(Batch(batch.input_file_id, batch.batch_id, batch.custom_ids, "ingested"))
        if remote.status == "failed":
            errors = "; ".join(e.message or "" for e in (remote.errors.data or [])) if remote.errors else ""
            raise UserError(f"batch {remote.id} failed: {errors or 'no reason given'}")

    def ingest_line(self, entry: dict, batch_id: str) -> None:
        """One output or error line of a batch."""
        key, attempt = parse_custom_id(entry["custom_id"])
        planned = self.items.get(key)
        if planned is None or self.store.result(key) is not None:
            return
        response = entry.get("response") or {}
        status = response.get("status_code")
        if status != 200:
            body = response.get("body") or entry.get("error") or {}
            reason = f"HTTP {status}: {json.dumps(body)[:300]}"
            if status is not None and not is_transient(status):
                self.store.put_many([(key, planned.item_id, "failed", {"reason": reason, "attempts": 0})])
                self.stats.finished["failed"] += 1
                self.bar.update(1)
            else:
                self.transient_failure(key, reason)
            return
        completion = completion_of(response["body"])
        cost = call_cost(completion.prompt_tokens, completion.completion_tokens, self.price, batch=True)
        history = self.store.history(key)
        if attempt < history.next_attempt:
            return
        calls = [(c, paid) for _, c, paid in history.calls] + [(completion, cost)]
        order = permutation(planned.n, self.settings.shuffle_seed, key)
        finish = settle(read_reply(completion.reply, planned.n), order, calls, self.options.max_attempts)
        self.store.record(key, attempt, batch_id, completion, cost, (planned.item_id, *finish) if finish else None)
        self.stats.add_call(completion.prompt_tokens, completion.completion_tokens, cost)
        self.budget.settle(planned, cost)
        if finish:
            self.stats.finished[finish[0]] += 1
            self.bar.update(1)

    def transient_failure(self, key: str, reason: str) -> None:
        """Count a failure that a new round may fix; past --max-retries the item stays pending."""
        self.transient[key] += 1
        if key in self.items:
            self.budget.settle(self.items[key], 0.0)
        if self.transient[key] > self.options.max_retries:
            self.stats.pending[key] = reason


def run_batches(job: JudgeJob, work: Plan, api_key: str) -> RunStats:
    """Judge the plan's unfinished items through the Batch API."""
    options = job.options
    with make_sync_client(options.base_urls[0], api_key, options.timeout, options.max_retries) as client:
        return BatchRun(job, work, client).run()
