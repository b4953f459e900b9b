"""CLI verbs of the AI-feedback pipeline: ``instructions``, ``decode``, ``annotate``, ``assemble``, ``agreement``.

Heavy imports (openai, transformers, PIL) stay inside the verbs so that ``vlfeedback --help`` stays instant. A verb
whose work is not finished (items pending after retries, a spent budget, batches still running) exits with 3; one
that finished but produced nothing usable (no instructions drawn, nothing decoded, more rows failed than
``--max-fail-rate`` allows) exits with 1 and says why; a problem found before any work (a bad flag, an unreachable
endpoint) exits with 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

INCOMPLETE = 3
"""Exit status of a run that stopped with work left: re-run the same command to continue."""
FAILED = 1
"""Exit status of a run that finished without a usable result (nothing written, or too many rows failed)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the pipeline verbs to the ``vlfeedback`` parser."""
    instructions = subparsers.add_parser(
        "instructions",
        help="collect instructions from source datasets",
        description="Collect instructions from source datasets into the release layout, each read by an adapter.",
        epilog=_adapters_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    instructions.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a source by adapter name: a file, a folder or a Hub dataset ORG/NAME[@REV]; repeatable",
    )
    instructions.add_argument(
        "--list-adapters", action="store_true", help="list the adapters and the fields each expects, and exit"
    )
    instructions.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="folder the source's image paths are relative to (default: the source's folder)",
    )
    instructions.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="NAME=N",
        help="rows to draw from a source, or 'all' (default: the paper's table)",
    )
    instructions.add_argument("--adapters", type=Path, help="YAML of extra or changed adapters (see adapters.yaml)")
    instructions.add_argument("--seed", type=int, default=0, help="seed of the quota draws (default 0)")
    instructions.add_argument("--out", type=Path, help="output folder (release layout)")
    instructions.add_argument("--quiet", action="store_true", help="no progress bar")
    instructions.set_defaults(func=_instructions)

    decode = subparsers.add_parser("decode", help="let a model pool answer every instruction")
    decode.add_argument("--input", type=Path, required=True, help="folder written by `vlfeedback instructions`")
    decode.add_argument("--pool", type=Path, required=True, help="pool YAML (see builders/pipeline/pool.example.yaml)")
    decode.add_argument("--out", type=Path, required=True, help="output folder (release layout, no ratings yet)")
    decode.add_argument("--k", type=int, help="members per instruction (default: the pool file's k, else 4)")
    decode.add_argument("--seed", type=int, help="seed of the member draw (default: the pool file's seed, else 0)")
    decode.add_argument(
        "--shard", default="0/1", metavar="I/N", help="decode only shard I of N (by content hash); merge with assemble"
    )
    _endpoint_flags(decode)
    decode.set_defaults(func=_decode)

    annotate = subparsers.add_parser("annotate", help="rate every response with a judge (resumable)")
    annotate.add_argument("--input", type=Path, required=True, help="folder written by `vlfeedback decode`")
    annotate.add_argument("--out", type=Path, required=True, help="output folder; its annotate/ holds the store")
    annotate.add_argument(
        "--base-url",
        required=True,
        action="append",
        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1; replicas of one deployment: repeat the "
        "flag or separate them with commas (--concurrency then applies to each)",
    )
    annotate.add_argument("--judge-model", required=True, help="judge model name at the endpoint, e.g. gpt-4o")
    annotate.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    annotate.add_argument(
        "--template", type=Path, help="rubric prompt with {instruction} and {texts} (default: the kit's)"
    )
    annotate.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight per --base-url replica (default 16)"
    )
    annotate.add_argument(
        "--max-attempts", type=int, default=3, help="asks per item when replies are malformed (default 3)"
    )
    annotate.add_argument("--shuffle", action="store_true", help="show each item's responses in a seeded random order")
    annotate.add_argument(
        "--seed", type=int, default=0, help="seed of --shuffle, also sent as the request's seed (default 0)"
    )
    annotate.add_argument("--temperature", type=float, default=0.0, help="judge temperature (default 0)")
    annotate.add_argument("--max-tokens", type=int, default=2048, help="judge reply token limit (default 2048)")
    annotate.add_argument(
        "--image-detail", default="high", choices=("low", "high", "auto"), help="image detail (default high)"
    )
    annotate.add_argument(
        "--response-format",
        default="text",
        choices=("text", "json-schema"),
        help="json-schema: send the rubric's JSON schema as response_format (OpenAI structured outputs; vLLM and "
        "SGLang guided decoding), so a conforming judge cannot send an unparseable reply (default text)",
    )
    annotate.add_argument(
        "--max-fail-rate",
        type=float,
        default=0.05,
        metavar="RATE",
        help="exit 1 when more than this share of the settled rows is failed, refused or invalid (default 0.05)",
    )
    annotate.add_argument("--shard", default="0/1", metavar="I/N", help="judge only shard I of N (by content hash)")
    annotate.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half price, up to 24 h)")
    annotate.add_argument("--batch-id", help="with --batch: adopt this submitted batch (e.g. after losing the store)")
    annotate.add_argument("--poll-interval", type=float, default=60.0, help="seconds between batch polls (default 60)")
    annotate.add_argument("--no-wait", action="store_true", help="with --batch: submit (or check) and exit")
    annotate.add_argument("--dry-run", action="store_true", help="estimate the cost of the run and exit; no calls")
    annotate.add_argument("--max-cost", type=float, metavar="USD", help="stop before the ledger's spend passes this")
    annotate.add_argument(
        "--retry-failed", action="store_true", help="ask again about items recorded as failed or refused"
    )
    _endpoint_flags(annotate)
    annotate.set_defaults(func=_annotate, extras=("pipeline",))

    assemble = subparsers.add_parser(
        "assemble", help="write the release layout from the stores of annotate (or decode) shards"
    )
    assemble.add_argument("--input", type=Path, required=True, help="the folder that was annotated (or decoded)")
    assemble.add_argument("--out", type=Path, required=True, help="output folder")
    assemble.add_argument(
        "--store",
        type=Path,
        action="append",
        default=[],
        help="a store to read: annotate's, or decode's (repeat to merge shards; default OUT/annotate/state.sqlite)",
    )
    assemble.set_defaults(func=_assemble)

    agreement = subparsers.add_parser("agreement", help="agreement of judge preferences with human pairwise labels")
    agreement.add_argument("--judge", type=Path, required=True, help="an annotated folder (or its jsonl)")
    agreement.add_argument(
        "--human", type=Path, required=True, help="labels: CSV or JSONL with id,model_a,model_b,preferred[,aspect]"
    )
    agreement.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI (default 1000)")
    agreement.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    agreement.add_argument("--json", action="store_true", help="machine-readable output")
    agreement.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="also write the results as JSON with the judged folder's name and the label file's name, sha256 and "
        "count (no paths); as a built folder's agreement.json, the dataset card cites it",
    )
    agreement.set_defaults(func=_agreement)


def _adapters_epilog() -> str:
    """The kit's adapters, one line each, for ``instructions --help`` (read from adapters.yaml: no heavy import)."""
    from vlfeedback_kit.builders.pipeline.instructions import ADAPTERS_FILE, load_adapters

    lines = [f"  {adapter.describe()}" for adapter in load_adapters().values()]
    return (
        f"adapters (NAME: which records it reads; from {ADAPTERS_FILE.name}, extend with --adapters FILE):\n"
        + "\n".join(lines)
    )


def _endpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument(
        "--max-retries", type=int, default=8, help="retries of 429/5xx/timeouts per request (default 8)"
    )
    parser.add_argument("--prices", type=Path, help="price table YAML (default: the kit's prices.yaml)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _instructions(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.instructions import collect, load_adapters, parse_assignments
    from vlfeedback_kit.errors import UserError

    if args.list_adapters:
        for adapter in load_adapters(args.adapters).values():
            print(adapter.describe())
        return 0
    if not args.source or args.out is None:
        raise UserError("--source NAME=PATH and --out DIR are required (see --list-adapters for the names)")
    report = collect(
        parse_assignments(args.source, "--source"),
        args.out,
        images=parse_assignments(args.images, "--images"),
        quotas=parse_assignments(args.quota, "--quota"),
        adapters_file=args.adapters,
        seed=args.seed,
        progress=not args.quiet,
    )
    empty = []
    for prefix, counts in report["sources"].items():
        skipped = {k: counts[k] for k in ("no_prompt", "no_image", "bad_image", "duplicate") if counts.get(k)}
        converted = f"  converted to JPEG {counts['converted']}" if counts.get("converted") else ""
        print(
            f"  {prefix:<10} drew {counts['drawn']:>6} of {counts['read']:>7} read (quota {counts['quota'] or 'all'})"
            f"{'  skipped ' + json.dumps(skipped) if skipped else ''}{converted}"
        )
        for note in counts["notes"]:
            print(f"  {'':<10} {note}")
        if not counts["drawn"]:
            empty.append(prefix)
    print(f"wrote {report['instructions']} instructions to {args.out}")
    if empty:
        print(f"no instructions drawn from {', '.join(empty)} (see the reasons above); fix the flags and re-run")
        return FAILED
    print(f"next: vlfeedback decode --input {args.out} --pool pool.yaml --out responses")
    return 0


def _merge_hint(verb: str, args: argparse.Namespace, shard: tuple[int, int], merged: str, stage: str) -> str:
    """The line a shard's run ends with: this shard is done, and the ``assemble`` that merges every shard."""
    index, count = shard
    stores = " ".join(f"--store SHARD{i}/{stage}/state.sqlite" for i in range(count))
    return (
        f"{verb} shard {index}/{count} done in {args.out}; next, once every shard is done: vlfeedback assemble "
        f"--input {args.input} --out {merged} {stores}"
    )


def _decode(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.decode import decode
    from vlfeedback_kit.builders.pipeline.judge import parse_shard

    shard = parse_shard(args.shard)
    report = decode(
        args.input,
        args.out,
        args.pool,
        k=args.k,
        seed=args.seed,
        prices=args.prices,
        timeout=args.timeout,
        max_retries=args.max_retries,
        progress=not args.quiet,
        shard=shard,
    )
    others = f", other shards {report['other_shards']}" if report["other_shards"] else ""
    print(
        f"decoded {report['ok']} of {report['rows']} instructions into {args.out} "
        f"(pending {report['pending']}, failed {report['failed']}, invalid {report['invalid']}{others})"
    )
    if not report["complete"]:
        print("some answers are missing (see decode/failures.jsonl): re-run the same command to finish")
        return INCOMPLETE
    if not report["ok"]:
        print(f"nothing was decoded (see {args.out}/decode/failures.jsonl for why)")
        return FAILED
    if shard[1] > 1:
        print(_merge_hint("decode", args, shard, "responses", "decode"))
        return 0
    print(f"next: vlfeedback annotate --input {args.out} --out annotated --base-url URL --judge-model NAME")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.annotate import AnnotateOptions, annotate
    from vlfeedback_kit.builders.pipeline.judge import parse_shard
    from vlfeedback_kit.builders.pipeline.judging import MAX_COST_STOP

    options = AnnotateOptions(
        input_dir=args.input,
        out_dir=args.out,
        base_url=args.base_url,
        judge_model=args.judge_model,
        api_key_env=args.api_key_env,
        template=args.template,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
        max_attempts=args.max_attempts,
        shuffle=args.shuffle,
        seed=args.seed,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        image_detail=args.image_detail,
        response_format=args.response_format,
        max_fail_rate=args.max_fail_rate,
        shard=parse_shard(args.shard),
        batch=args.batch,
        batch_id=args.batch_id,
        poll_interval=args.poll_interval,
        no_wait=args.no_wait,
        prices=args.prices,
        dry_run=args.dry_run,
        max_cost=args.max_cost,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    report = annotate(options)
    if args.dry_run:
        print(json.dumps(report, indent=2))
        return 0
    run, ledger = report["run"], report["ledger"]
    if run["cost_usd"] is None or ledger["unpriced_calls"]:
        money = f"cost unknown: the price table has no price for {args.judge_model!r} (pass --prices FILE)"
    else:
        money = f"${run['cost_usd']:.4f} this run, ${ledger['cost_usd']:.4f} in all"
    print(f"judged {sum(run['finished'].values())} items in {run['seconds']:.1f}s with {run['calls']} calls ({money})")
    print(
        f"  ok {report['ok']}, failed {report['failed']}, refused {report['refused']}, invalid {report['invalid']}, "
        f"pending {report['pending']}, other shards {report['other_shards']} of {report['rows']} rows"
    )
    if not report["complete"]:
        if (run["stopped"] or "").startswith(MAX_COST_STOP):
            print(
                f"stopped: the budget is spent (--max-cost {args.max_cost}, ${ledger['cost_usd']:.4f} in the ledger); "
                f"raise --max-cost to judge the {report['pending']} pending items (nothing finished is asked again)"
            )
            return INCOMPLETE
        if run["stopped"]:
            print(f"stopped: {run['stopped']}")
        print("items are pending: re-run the same command to continue (nothing finished is asked again)")
        return INCOMPLETE
    if report["fail_rate"] > args.max_fail_rate:
        not_rated = report["failed"] + report["refused"] + report["invalid"]
        print(
            f"{not_rated} of {not_rated + report['ok']} rows were not rated ({report['fail_rate']:.1%} > "
            f"--max-fail-rate {args.max_fail_rate:.1%}); the reasons:"
        )
        for reason, count in list(report["failure_reasons"].items())[:8]:
            print(f"  {count:>7}  {reason[:240]}")
        print(
            f"see {args.out}/annotate/failures.jsonl; fix the cause and re-run with --retry-failed, or raise "
            "--max-fail-rate to accept these rows as lost"
        )
        return FAILED
    if options.shard[1] > 1:
        print(_merge_hint("annotate", args, options.shard, "annotated", "annotate"))
        return 0
    print(f"release layout: {args.out} (next: vlfeedback build --source {args.out} --out vlfeedback)")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.annotate import state_path
    from vlfeedback_kit.builders.pipeline.assemble import assemble_from

    report = assemble_from(args.input, args.out, args.store or [state_path(args.out)])
    what, refused = ("answered", "") if "pool" in report else ("judged", f", refused {report['refused']}")
    print(
        f"assembled {report['ok']} {what} rows into {args.out} (failed {report['failed']}{refused}, "
        f"invalid {report['invalid']}, pending {report['pending']})"
    )
    return 0 if report["complete"] else INCOMPLETE


def _agreement(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.agreement import (
        agreement,
        agreement_record,
        check_matched,
        format_table,
        read_judged,
        read_labels,
    )
    from vlfeedback_kit.files import write_json

    labels = read_labels(args.human)
    results = agreement(labels, read_judged(args.judge), args.bootstrap, args.seed)
    check_matched(labels, results)
    if args.out is not None:
        write_json(args.out, agreement_record(results, args.judge, args.human, labels))
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0
