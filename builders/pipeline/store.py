"""The durable per-item store of a pipeline stage: SQLite in WAL mode, one row per finished item, keyed by content.

Tables:

- ``meta(name, value)`` — the stage's settings (judge model, template hash…), so a resumed run can check it is
  the same run and ``assemble`` can recompute keys.
- ``calls(key, attempt, via, content, refusal, finish_reason, prompt_tokens, completion_tokens, cost, at)`` — the
  ledger: every paid call, committed as soon as its reply arrives (``via`` is ``sync`` or a batch id; a ``reset``
  row with no reply starts a new round of attempts for ``--retry-failed``). Spend and token totals sum it.
- ``results(key, item_id, outcome, result, at)`` — the finished items (``ok``, ``failed``, ``refused``), written
  in the same transaction as the call that finished them.
- ``batches(input_file_id, batch_id, keys, status, at)`` — Batch API submissions, recorded before and after
  ``batches.create`` so that a crash between the two is recovered by looking the batch up by its input file.

A ``kill -9`` loses at most the calls in flight, whose items are then redone. One process at a time holds a store
(an advisory lock beside it, released by the OS when the process dies).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlfeedback_kit.builders.pipeline.endpoint import Completion
from vlfeedback_kit.builders.pipeline.judge import Reply
from vlfeedback_kit.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    key TEXT NOT NULL, attempt INTEGER NOT NULL, via TEXT NOT NULL,
    content TEXT, refusal TEXT, finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, cost REAL,
    at REAL NOT NULL, PRIMARY KEY (key, attempt));
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, item_id TEXT NOT NULL, outcome TEXT NOT NULL, result TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    input_file_id TEXT PRIMARY KEY, batch_id TEXT, keys TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL);
"""
RESET = "reset"


@dataclass(frozen=True)
class Result:
    """A finished item: its outcome and the JSON result recorded with it."""

    outcome: str
    data: dict


@dataclass(frozen=True)
class History:
    """An item's calls in its current round (after its last reset): (attempt, completion, cost), the ``via`` of
    each (``sync``, a batch id, ``eval:<model>``), and the number the next call gets."""

    calls: list[tuple[int, Completion, float | None]]
    next_attempt: int
    vias: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """A Batch API submission: its input file, the batch (None until created), the ``key:attempt`` ids in it."""

    input_file_id: str
    batch_id: str | None
    custom_ids: list[str]
    status: str


class Store:
    """One stage's durable state; see the module docstring for the tables."""

    def __init__(self, path: Path, *, lock: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock_file = _acquire(path.with_name(path.name + ".lock")) if lock else None
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database and release the lock."""
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta ---------------------------------------------------------------------------------------------------

    def meta(self, name: str) -> object:
        """A recorded setting (None when absent)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_meta(self, name: str, value: object) -> None:
        """Record (or replace) a descriptive value that is not a setting, e.g. where the template came from."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value, sort_keys=True)))

    def bind(self, name: str, value: object, flag: str, record: bool = True) -> None:
        """Record a setting on first use; on a later run, fail unless it is the same (``flag`` is what differs)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            if record:
                self.db.execute("INSERT INTO meta VALUES (?, ?)", (name, json.dumps(value, sort_keys=True)))
            return
        recorded, value = json.loads(row[0]), json.loads(json.dumps(value))
        if recorded != value:
            raise UserError(
                f"{self.path} was made with other settings: {changes(name, recorded, value)}; keep the same "
                f"{flag}, or use another --out for a new run"
            )

    def absorb(self, path: Path) -> None:
        """Copy another store's settings (those not recorded here), ledger and finished items into this one — the
        stores of one run's shards, each key in one of them; what is here already is kept."""
        self.db.execute("ATTACH DATABASE ? AS other", (str(path),))
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for table in ("meta", "calls", "results"):
                    self.db.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM other.{table}")
        finally:
            self.db.execute("DETACH DATABASE other")

    # --- items --------------------------------------------------------------------------------------------------

    def finished(self) -> dict[str, str]:
        """Every finished item: key → outcome."""
        return dict(self.db.execute("SELECT key, outcome FROM results"))

    def result(self, key: str) -> Result | None:
        """The finished item of a key, if any."""
        row = self.db.execute("SELECT outcome, result FROM results WHERE key = ?", (key,)).fetchone()
        return Result(row[0], json.loads(row[1])) if row else None

    def history(self, key: str) -> History:
        """The calls of the current round of an item and the number its next call gets (never reused)."""
        rows = self.db.execute(
            "SELECT attempt, via, content, refusal, finish_reason, prompt_tokens, completion_tokens, cost "
            "FROM calls WHERE key = ? ORDER BY attempt",
            (key,),
        ).fetchall()
        calls: list[tuple[int, Completion, float | None]] = []
        vias: list[str] = []
        for attempt, via, content, refusal, finish, prompt, completion, cost in rows:
            if via == RESET:
                calls, vias = [], []
            else:
                calls.append((attempt, Completion(Reply(content, refusal, finish), prompt, completion), cost))
                vias.append(via)
        return History(calls, rows[-1][0] + 1 if rows else 1, vias)

    def record(
        self,
        key: str,
        attempt: int,
        via: str,
        completion: Completion | None,
        cost: float | None,
        finish: tuple[str, str, dict] | None = None,
    ) -> bool:
        """Commit one call (skipped if that attempt is already recorded) and, with ``finish``, the item's result."""
        reply = completion.reply if completion else Reply(None)
        tokens = (completion.prompt_tokens, completion.completion_tokens) if completion else (0, 0)
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, attempt, via, reply.content, reply.refusal, reply.finish_reason, *tokens, cost, now),
            ).rowcount
            if inserted and finish is not None:
                item_id, outcome, data = finish
                self.db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                    (key, item_id, outcome, json.dumps(data, ensure_ascii=False), now),
                )
        return bool(inserted)

    def put_many(self, rows: list[tuple[str, str, str, dict]]) -> None:
        """Record finished items without a ledgered call (a local model's answers, a request the API rejected)."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                [
                    (key, item_id, outcome, json.dumps(data, ensure_ascii=False), now)
                    for key, item_id, outcome, data in rows
                ],
            )

    def reopen(self, outcomes: tuple[str, ...]) -> int:
        """Forget the results with these outcomes and start a new round of attempts for them; returns how many."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            keys = [
                k
                for (k,) in self.db.execute(
                    f"SELECT key FROM results WHERE outcome IN ({','.join('?' * len(outcomes))})", outcomes
                )
            ]
            now = time.time()
            for key in keys:
                attempt = self.history(key).next_attempt
                self.db.execute(
                    "INSERT INTO calls (key, attempt, via, at) VALUES (?, ?, ?, ?)", (key, attempt, RESET, now)
                )
                self.db.execute("DELETE FROM results WHERE key = ?", (key,))
        return len(keys)

    # --- money --------------------------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int, float, int]:
        """(prompt tokens, completion tokens, USD, calls) over the whole ledger."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost), 0), "
            "COUNT(*) FROM calls WHERE via != ?",
            (RESET,),
        ).fetchone()
        return int(row[0]), int(row[1]), float(row[2]), int(row[3])

    def unpriced_calls(self) -> int:
        """Calls in the ledger whose cost is unknown (the judge had no price when they were made)."""
        row = self.db.execute("SELECT COUNT(*) FROM calls WHERE via != ? AND cost IS NULL", (RESET,)).fetchone()
        return int(row[0])

    # --- batches ------------------------------------------------------------------------------------------------

    def batches(self, open_only: bool = True) -> list[Batch]:
        """Recorded submissions (by default those not yet ingested)."""
        query = "SELECT input_file_id, batch_id, keys, status FROM batches"
        rows = self.db.execute(query + (" WHERE status != 'ingested'" if open_only else "") + " ORDER BY at")
        return [Batch(file_id, batch_id, json.loads(keys), status) for file_id, batch_id, keys, status in rows]

    def save_batch(self, batch: Batch) -> None:
        """Insert or update a submission."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?)",
                (batch.input_file_id, batch.batch_id, json.dumps(batch.custom_ids), batch.status, time.time()),
            )


def result_in(stores: list[Store], key: str) -> Result | None:
    """The finished item of a key in the first of ``stores`` that has it (the shards of one run hold each once)."""
    return next((r for r in (store.result(key) for store in stores) if r is not None), None)


def changes(name: str, recorded: object, value: object) -> str:
    """What differs between a recorded setting and this run's, field by field: ``shuffle_seed: 0 → null``."""
    if not (isinstance(recorded, dict) and isinstance(value, dict)):
        return f"{name}: {json.dumps(recorded)} → {json.dumps(value)}"
    absent = "(not set)"
    return ", ".join(
        f"{field}: {json.dumps(recorded[field]) if field in recorded else absent} → "
        f"{json.dumps(value[field]) if field in value else absent}"
        for field in sorted(recorded.keys() | value.keys())
        if recorded.get(field, absent) != value.get(field, absent)
    )


def _acquire(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (the OS drops it if the process dies), or a UserError."""
    import fcntl

    handle = lock_path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise UserError(
            f"another process is using {lock_path.with_suffix('')}; wait for it or use another --out"
        ) from err
    return handle
