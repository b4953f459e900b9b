"""``vlfeedback decode``: a model pool answers every instruction; output in the release layout, without ratings.

    vlfeedback decode --input instructions/ --pool pool.yaml --out responses/
    vlfeedback decode --input instructions/ --pool pool.yaml --out shard0/ --shard 0/2     # one of two machines
    vlfeedback assemble --input instructions/ --out responses/ \
        --store shard0/decode/state.sqlite --store shard1/decode/state.sqlite              # merged

With ``--shard I/N`` a run answers only the instructions of shard I (by a hash of the image and the prompt, so
every machine agrees); ``assemble`` merges the shards' stores into one release layout, written as a run would.

Each instruction is answered by ``k`` distinct pool members drawn with the pool's seed. Answers are committed to
``OUT/decode/state.sqlite`` as they come (keyed by image, prompt and the member's settings), so an interrupted
decode re-run with the same command redoes only what is missing — and a pool that changes keeps the answers of
the members that did not. Rows whose answers are not all in yet are listed in ``decode/failures.jsonl``, with the
rows no member is asked about: every image is decoded in full first, and one that does not decode (truncated,
empty, not an image) is an invalid row (``unreadable_image``), not a crash mid-run.

Before the first member starts, every member that has work is checked (local model folders or Hub ids, adapters,
``api_key_env`` variables) and every endpoint is probed once; a run whose endpoint stops answering is stopped by
the breaker with the host and the cause. A member may list several replicas of its endpoint (``base_url`` as a
list): requests spread over them, and the run stops only when all of them are down (see ``endpoint.Replicas``).
With temperature > 0 each answer is sampled with a seed drawn from the pool seed and its content key (sent as
``seed`` to endpoints; a local member, served by :mod:`vlfeedback_kit.serving`, samples each row of a batch with its
own seed), so a resumed decode samples exactly what an uninterrupted one would. ``decode/report.json`` counts the
run's work per member: calls and tokens for endpoints, items, seconds and items/s for local models.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.builders.pipeline.cost import Price, call_cost, load_prices, price_for
from vlfeedback_kit.builders.pipeline.endpoint import (
    GaveUp,
    Rejected,
    Replicas,
    RetryPolicy,
    RunStats,
    api_key_from_env,
    check_endpoint,
    complete,
    for_each,
)
from vlfeedback_kit.builders.pipeline.judge import image_data_url, shard_of
from vlfeedback_kit.builders.pipeline.layout import (
    JsonlWriter,
    LayoutWriter,
    Line,
    StageInput,
    check_out,
    open_input,
    write_json,
)
from vlfeedback_kit.builders.pipeline.pool import (
    Member,
    Pool,
    assign,
    chat_request,
    load_pool,
    pool_of_record,
    pool_record,
    preflight,
    sampling_seed,
    unit_key,
)
from vlfeedback_kit.builders.pipeline.store import Store, result_in
from vlfeedback_kit.builders.sources import IMAGE_DIR
from vlfeedback_kit.builders.validate import Reject, check_image
from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from huggingface_hub.utils import tqdm

OUTPUT_JSONL = "responses.jsonl"
STAGE_DIR = "decode"
NO_KEY = "EMPTY"
"""The API key sent to an endpoint member without ``api_key_env`` (a local vLLM server accepts any)."""


@dataclass(frozen=True)
class Unit:
    """One answer to produce: a member's response to one instruction."""

    key: str
    item_id: str
    offset: int
    seed: int


@dataclass(frozen=True)
class Row:
    """An instruction of the input: where it is, and the answer keys of its members (in pool-draw order)."""

    line: int
    offset: int
    item_id: str
    members: tuple[str, ...]
    keys: tuple[str, ...]


def image_problem(
    folder: StageInput, line: Line, image: bytes | None, problem: tuple[str, str] | None
) -> tuple[str, str] | None:
    """Why a line's image cannot reach a model, or None: every image is decoded in full here (a truncated JPEG
    would otherwise stop a local model mid-run, or reach an endpoint as a broken picture), and an empty file is
    said to be empty, not missing."""
    if problem is not None and problem[0] != "missing_image":
        return problem
    image = folder.image_bytes(line.row) if problem is not None else image  # b"": an empty file, None: no file
    if image is None:
        return problem
    try:
        check_image(image, "decode")
    except Reject as err:
        return err.reason, f"{IMAGE_DIR}/{line.row['id']}.jpg: {err.detail}"
    return None


def instruction_shard(image_sha256: str, prompt: str, shards: int) -> int:
    """The ``--shard`` an instruction belongs to: a function of its image and prompt only, so every machine agrees."""
    blob = json.dumps([image_sha256, prompt], ensure_ascii=False).encode("utf-8")
    return shard_of(hashlib.sha256(blob).hexdigest(), shards)


def plan_units(
    folder: StageInput, pool: Pool, finished: dict[str, str], shard: tuple[int, int] | None = None
) -> tuple[list[Row], list[dict], dict[str, list[Unit]], int]:
    """The rows of ``shard`` (None: all) to write, the rows that cannot be decoded, per member the answers still
    missing, and how many rows other shards answer."""
    rows, invalid = [], []
    todo: dict[str, list[Unit]] = {m.name: [] for m in pool.members}
    queued: set[str] = set()
    other_shards = 0
    for line in folder.lines():
        bad_prompt = line.row is not None and not isinstance(line.row.get("prompt"), str)
        image, problem = folder.usable(line, "'prompt' is missing or not a string" if bad_prompt else None)
        problem = image_problem(folder, line, image, problem)
        if problem is not None:
            invalid.append(line.invalid(problem))
            continue
        image_sha = hashlib.sha256(image).hexdigest()
        if shard is not None and instruction_shard(image_sha, line.row["prompt"], shard[1]) != shard[0]:
            other_shards += 1
            continue
        members = assign(line.row["id"], pool)
        keys = tuple(unit_key(image_sha, line.row["prompt"], m) for m in members)
        rows.append(Row(line.number, line.offset, line.row["id"], tuple(m.name for m in members), keys))
        for member, key in zip(members, keys, strict=True):
            if key not in finished and key not in queued:
                queued.add(key)
                seed = sampling_seed(pool.seed, image_sha, line.row["prompt"], member.name)
                todo[member.name].append(Unit(key, line.row["id"], line.offset, seed))
    return rows, invalid, todo, other_shards


def run_local(member: Member, units: list[Unit], folder: StageInput, store: Store, bar: tqdm) -> dict:
    """Answer ``units`` with a local model, one padded batch at a time (each row sampled with its unit's seed),
    committing each batch; returns the work done (items, seconds, items/s)."""
    from PIL import Image

    from vlfeedback_kit import serving

    started = time.perf_counter()
    served = serving.load(member.model, member.adapter, dtype=member.dtype, device=member.device)
    decoding, settings = member.decoding(), member.settings()
    for start in range(0, len(units), member.batch_size):
        batch = units[start : start + member.batch_size]
        rows = [folder.row(unit.offset) for unit in batch]
        prompts = [(Image.open(io.BytesIO(folder.image_bytes(r))).convert("RGB"), r["prompt"]) for r in rows]
        texts = serving.generate(served, prompts, None, decoding, seeds=[unit.seed for unit in batch])
        store.put_many(
            [
                (u.key, u.item_id, "ok", {"response": t, "generation": settings})
                for u, t in zip(batch, texts, strict=True)
            ]
        )
        bar.update(len(batch))
    seconds = time.perf_counter() - started
    return {"items": len(units), "seconds": round(seconds, 3), "items_per_second": round(len(units) / seconds, 3)}


async def run_endpoint(
    member: Member,
    units: list[Unit],
    folder: StageInput,
    store: Store,
    price: Price | None,
    policy: RetryPolicy,
    timeout: float,
    stats: RunStats,
    bar: tqdm,
) -> None:
    """Answer ``units`` through an OpenAI-compatible endpoint (its replicas, ``concurrency`` in flight on each),
    committing each answer."""
    flag = f"the base_url of pool member {member.name!r}"
    replicas = Replicas(member.replicas, member_key(member), timeout, flag, member.concurrency)
    settings = member.settings()

    async def answer(unit: Unit) -> None:
        row = folder.row(unit.offset)
        request = chat_request(member, row["prompt"], image_data_url(folder.image_bytes(row)))
        if member.generation["temperature"] > 0:
            request["seed"] = unit.seed
        try:
            completion = await complete(replicas, request, policy, stats.retried)
        except GaveUp as err:
            stats.pending[unit.key] = f"{member.name}: {err}"
        except Rejected as err:
            store.put_many([(unit.key, unit.item_id, "failed", {"reason": f"{member.name}: {err}"})])
            stats.finished["failed"] += 1
        else:
            cost = call_cost(completion.prompt_tokens, completion.completion_tokens, price)
            reply = completion.reply
            usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
            data = {
                "response": (reply.content or reply.refusal or "").strip(),
                "generation": settings,
                "usage": usage,
                "cost_usd": cost,
            }
            store.record(
                unit.key, store.history(unit.key).next_attempt, "sync", completion, cost, (unit.item_id, "ok", data)
            )
            stats.add_call(completion.prompt_tokens, completion.completion_tokens, cost)
            stats.finished["ok"] += 1
        bar.update(1)

    try:
        await for_each(units, answer, member.concurrency * len(replicas), lambda unit: True)
    finally:
        await replicas.close()


def member_key(member: Member) -> str:
    """The API key an endpoint member sends (a local vLLM server without ``api_key_env`` accepts any)."""
    return api_key_from_env(member.api_key_env) if member.api_key_env else NO_KEY


def check_members(members: list[Member], timeout: float) -> None:
    """Before any member starts: every member's model / key (``preflight``), then one probe per endpoint replica
    (unreachable replicas are named on stderr while another of the member's answers)."""
    preflight(members)
    probed = set()
    for member in members:
        if member.kind == "openai" and (member.replicas, member.api_key_env) not in probed:
            probed.add((member.replicas, member.api_key_env))
            flag = f"the base_url of pool member {member.name!r}"
            key_flag = f"api_key_env of {member.name!r}"
            for line in check_endpoint(member.replicas, member_key(member), timeout, flag, key_flag):
                print(f"vlfeedback decode: {line}", file=sys.stderr)


def decode(
    input_dir: Path,
    out_dir: Path,
    pool_path: Path,
    k: int | None = None,
    seed: int | None = None,
    prices: Path | None = None,
    timeout: float = 120.0,
    max_retries: int = 8,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Decode every instruction of ``input_dir`` (of ``shard``) with the pool into ``out_dir``; returns the report."""
    from huggingface_hub.utils import tqdm

    check_out(input_dir, out_dir)
    pool = load_pool(pool_path, k, seed)
    price_table = load_prices(prices)
    stats = RunStats()
    local: dict[str, dict] = {}
    with open_input(input_dir) as folder, Store(out_dir / STAGE_DIR / "state.sqlite") as store:
        store.bind("shard", list(shard), "--shard")
        store.put_meta("pool", pool_record(pool))
        rows, invalid, todo, other_shards = plan_units(folder, pool, store.finished(), shard)
        check_members([m for m in pool.members if todo[m.name]], timeout)
        started = time.perf_counter()
        for member in pool.members:
            units = todo[member.name]
            if not units:
                continue
            with tqdm(total=len(units), desc=f"decode {member.name}", unit=" answers", disable=not progress) as bar:
                if member.kind == "transformers":
                    local[member.name] = run_local(member, units, folder, store, bar)
                else:
                    price = price_for(member.model, price_table)
                    policy = RetryPolicy(max_retries=max_retries)
                    asyncio.run(run_endpoint(member, units, folder, store, price, policy, timeout, stats, bar))
        stats.seconds = time.perf_counter() - started
        report = write_output(folder, out_dir, [store], rows, invalid, other_shards)
    report["pool"] = pool_summary(pool)
    report["asked_this_run"] = {name: len(units) for name, units in todo.items()}
    report["run"] = stats.to_dict() | {"answers_missing": len(stats.pending), "local": local}
    write_json(out_dir / STAGE_DIR / "report.json", report)
    return report


def pool_summary(pool: Pool) -> dict:
    """The report's view of the pool: k, seed and each member's settings."""
    return {"k": pool.k, "seed": pool.seed, "members": {m.name: m.settings() for m in pool.members}}


def assemble_decoded(folder: StageInput, out_dir: Path, stores: list[Store]) -> dict:
    """``vlfeedback assemble`` over decode stores (the shards of one decode): the release layout of every row, as
    one unsharded run would write it, from the answers the stores hold; returns the report."""
    records = [store.meta("pool") for store in stores]
    if any(record != records[0] for record in records):
        raise UserError("--store: the decode stores were made with different pools and cannot be merged")
    pool = pool_of_record(records[0])
    rows, invalid, _, other_shards = plan_units(folder, pool, {})
    report = write_output(folder, out_dir, stores, rows, invalid, other_shards)
    report["pool"] = pool_summary(pool)
    write_json(out_dir / STAGE_DIR / "report.json", report)
    return report


def write_output(
    folder: StageInput, out_dir: Path, stores: list[Store], rows: list[Row], invalid: list[dict], other_shards: int
) -> dict:
    """The release layout of every fully answered row (answers looked up in ``stores``, the first that has one);
    the others, and invalid input rows, in the failures file."""
    with (
        LayoutWriter(out_dir, OUTPUT_JSONL, input_dir=folder.root) as writer,
        JsonlWriter(out_dir / STAGE_DIR / "failures.jsonl") as failures,
    ):
        for entry in invalid:
            failures.write(entry)
        counts: Counter = Counter(invalid=len(invalid))
        for row in rows:
            results = [result_in(stores, key) for key in row.keys]
            if all(r is not None and r.outcome == "ok" for r in results):
                source = folder.row(row.offset)
                completions = [
                    {"model": name, "response": r.data["response"], "generation": r.data["generation"]}
                    for name, r in zip(row.members, results, strict=True)
                ]
                writer.add(
                    {**source, "models": list(row.members), "completions": completions}, folder.image_bytes(source)
                )
                counts["ok"] += 1
                continue
            missing = {
                name: (r.data.get("reason") if r else "not answered yet: re-run decode")
                for name, r in zip(row.members, results, strict=True)
                if r is None or r.outcome != "ok"
            }
            outcome = "failed" if all(r is not None for r in results) else "pending"
            failures.write({"line": row.line, "id": row.item_id, "outcome": outcome, "missing": missing})
            counts[outcome] += 1
    return {
        "input": folder.root.name,
        "output": OUTPUT_JSONL,
        "rows": len(rows) + len(invalid) + other_shards,
        "other_shards": other_shards,
        **{name: counts[name] for name in ("ok", "failed", "pending", "invalid")},
        "complete": counts["pending"] == 0,
    }
