"""``vlfeedback assemble``: the annotated release layout, written from the input and the store(s) of judge results.

    vlfeedback assemble --input responses/ --out annotated/                       # again, from OUT's own store
    vlfeedback assemble --input responses/ --out merged/ --store s0/annotate/state.sqlite --store s1/...
    vlfeedback assemble --input instructions/ --out responses/ --store s0/decode/state.sqlite --store s1/...

The stores of ``decode --shard`` are merged the same way, into the layout ``decode`` writes (see ``decode``).

Written to OUT:

    vlfeedback.jsonl        one row per judged instruction, exactly the original layout: completions[k].annotations
                            [aspect] = {"Rating": "4", "Rationale": "..."}, plus ``judge`` provenance per row
    merged_images/<id>.jpg  the input's image bytes
    judge.json              {"judges": [{"model", "template_sha256", "items", "template" (where it is),
                            "template_text", and every judge setting: shuffle_seed, temperature, max_tokens,
                            image_detail, …}], "pool": [{"member", the generation settings, "responses"}]} — what
                            the dataset card states
    annotate/failures.jsonl every input row not in the jsonl: failed (raw replies kept), refused, invalid, pending
    annotate/report.json    the counts — rows = other shards + ok + failed + refused + invalid + pending —, the
                            fail rate (failed + refused + invalid over the settled rows) with the reasons counted,
                            and spend
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vlfeedback_kit.builders.pipeline.items import Plan, load, plan
from vlfeedback_kit.builders.pipeline.judge import JudgeSettings, Template
from vlfeedback_kit.builders.pipeline.layout import JsonlWriter, LayoutWriter, check_out, open_input
from vlfeedback_kit.builders.pipeline.store import Result, Store, result_in
from vlfeedback_kit.builders.sources import ReleaseFolder
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json

OUTPUT_JSONL = "vlfeedback.jsonl"
JUDGE_FILE = "judge.json"
FAILURES_FILE = "failures.jsonl"
REPORT_FILE = "report.json"
STAGE_DIR = "annotate"


def judged_row(row: dict, result: Result, settings: JudgeSettings, key: str) -> dict:
    """The release row of an ``ok`` item: the input row with annotations filled in and the judge's provenance."""
    completions = [
        {**completion, "annotations": annotations}
        for completion, annotations in zip(row["completions"], result.data["annotations"], strict=True)
    ]
    provenance = {name: result.data[name] for name in ("attempts", "permutation", "raw_reply", "usage", "cost_usd")}
    return {
        **row,
        "models": [c["model"] for c in completions],
        "completions": completions,
        "judge": {
            "model": settings.model,
            "template_sha256": settings.template_sha256,
            "outcome": result.outcome,
            **provenance,
            "key": key,
        },
    }


def failure_entry(line: int, item_id: str, key: str, result: Result | None) -> dict:
    """A failures-file entry for an item that did not make the jsonl (``result`` None: not judged yet)."""
    if result is None:
        return {
            "line": line,
            "id": item_id,
            "outcome": "pending",
            "reason": "not judged yet: re-run annotate",
            "key": key,
        }
    return {"line": line, "id": item_id, "outcome": result.outcome, **result.data, "key": key}


def settings_of(stores: list[Store]) -> JudgeSettings:
    """The judge settings the stores were made with (they must agree)."""
    recorded = [store.meta("judge") for store in stores]
    if None in recorded:
        raise UserError("--store: a store holds no judge settings (not made by `vlfeedback annotate`)")
    if any(r != recorded[0] for r in recorded):
        raise UserError("--store: the stores were made with different judge settings and cannot be merged")
    return JudgeSettings(**recorded[0])


def assemble(folder: ReleaseFolder, out_dir: Path, stores: list[Store], work: Plan) -> dict:
    """Write the annotated release layout for the items of ``work`` from the results in ``stores``."""
    settings = settings_of(stores)
    counts: Counter = Counter()
    with (
        LayoutWriter(out_dir, OUTPUT_JSONL, input_dir=folder.root) as writer,
        JsonlWriter(out_dir / STAGE_DIR / FAILURES_FILE) as failures,
    ):
        reasons: Counter = Counter()
        pool: Counter = Counter()
        for entry in work.invalid:
            failures.write(entry)
            counts["invalid"] += 1
            reasons[f"invalid: {entry['detail']}"] += 1
        for planned in work.items:
            result = result_in(stores, planned.key)
            if result is not None and result.outcome == "ok":
                item = load(folder, planned)
                writer.add(judged_row(item.row, result, settings, planned.key), item.image)
                pool.update(
                    json.dumps({**(c.get("generation") or {}), "member": c["model"]}, sort_keys=True)
                    for c in item.row["completions"]
                )
            else:
                failures.write(failure_entry(planned.line, planned.item_id, planned.key, result))
                if result is not None:
                    reasons[f"{result.outcome}: {result.data.get('reason')}"] += 1
            counts[result.outcome if result else "pending"] += 1
    totals = [store.totals() for store in stores]
    settled = sum(counts[o] for o in ("ok", "failed", "refused", "invalid"))
    report = {
        "input": folder.root.name,
        "output": OUTPUT_JSONL,
        "judge": settings.to_dict(),
        "rows": work.rows,
        "other_shards": work.other_shard,
        **{outcome: counts[outcome] for outcome in ("ok", "failed", "refused", "invalid", "pending")},
        "complete": counts["pending"] == 0,
        "fail_rate": round((settled - counts["ok"]) / settled, 6) if settled else 0.0,
        "failure_reasons": dict(reasons.most_common()),
        "ledger": {
            "calls": sum(t[3] for t in totals),
            "prompt_tokens": sum(t[0] for t in totals),
            "completion_tokens": sum(t[1] for t in totals),
            "cost_usd": round(sum(t[2] for t in totals), 6),
            "unpriced_calls": sum(store.unpriced_calls() for store in stores),
        },
    }
    template = stores[0].meta("template") or {}
    judge = {
        "model": settings.model,
        "template_sha256": settings.template_sha256,
        "items": counts["ok"],
        "template": template.get("source"),
        "template_text": template.get("text"),
        **{k: v for k, v in settings.to_dict().items() if k not in ("model", "template_sha256")},
    }
    members = [{**json.loads(member), "responses": n} for member, n in sorted(pool.items())]
    write_json(out_dir / JUDGE_FILE, {"judges": [judge], "pool": members})
    write_json(out_dir / STAGE_DIR / REPORT_FILE, report)
    return report


def assemble_from(input_dir: Path, out_dir: Path, store_paths: list[Path]) -> dict:
    """``vlfeedback assemble``: re-assemble from a run's own store, or merge the stores of several shards (of
    ``annotate``, or of ``decode``: their stores record the pool)."""
    check_out(input_dir, out_dir)
    missing = [str(p) for p in store_paths if not p.is_file()]
    if missing:
        raise UserError(f"--store: no store at {', '.join(missing)} (annotate writes OUT/{STAGE_DIR}/state.sqlite)")
    folder = open_input(input_dir)
    stores = [Store(path, lock=False) for path in store_paths]
    try:
        decoded = [store.meta("pool") is not None for store in stores]
        if all(decoded):
            from vlfeedback_kit.builders.pipeline.decode import assemble_decoded

            return assemble_decoded(folder, out_dir, stores)
        if any(decoded):
            raise UserError("--store: some stores are decode's and some annotate's; merge each stage's shards alone")
        settings = settings_of(stores)
        shard = stores[0].meta("shard") if len(stores) == 1 else None
        fixed = Template("", settings.template_sha256, "", texts=stores[0].meta("template_texts"))
        work = plan(folder, settings, fixed, tuple(shard) if shard else None)
        return assemble(folder, out_dir, stores, work)
    finally:
        folder.close()
        for store in stores:
            store.close()
