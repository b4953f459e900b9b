"""CLI verbs of evaluation: ``eval run``, ``eval score``, ``eval assemble`` (merge ``--shard`` runs) and
``eval report``.

    vlfeedback eval run --benchmark mme,mmhal,mmvet --data mme=MME/ --data mmhal=MMHal/ --data mmvet=mm-vet/ \
        --adapter runs/silkie --compare-base --judge-model gpt-4-0613 --judge-base-url URL --out evals/silkie
    vlfeedback eval score mme lmms_eval_mme_output/ --out mme_scores.json
    vlfeedback eval report evals/silkie

Heavy imports stay inside the verbs. Exit status as the pipeline's verbs: 2 for a problem found before any work
(a bad flag, a judge that cannot be reached or refuses the key), 3 for a run that left a benchmark incomplete
(a judge that stopped answering, ``--max-cost`` reached, failed judge calls), with one line per such benchmark
on stderr naming it, how many items were judged and why; re-running the same command continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlfeedback_kit.builders.pipeline.commands import INCOMPLETE  # one meaning of exit 3 for the whole CLI

JUDGE_BASE_URL = "https://api.openai.com/v1"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval run|score|report`` to the ``vlfeedback`` parser."""
    parser = subparsers.add_parser("eval", help="benchmark a model (and Silkie vs its base): run, score, report")
    verbs = parser.add_subparsers(dest="eval_verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="generate (resumable), judge (cached) and score benchmarks into --out")
    run.add_argument("--benchmark", required=True, help="comma list of mme, mmhal, mmvet, redteam, winrate")
    run.add_argument("--data", action="append", default=[], metavar="NAME=PATH", help="a benchmark's data (repeat)")
    run.add_argument("--model", help="base model path or Hub id (default: the --adapter run dir's base)")
    run.add_argument("--adapter", help="Silkie adapter: a run dir or Hub id (openai engine: its served model name)")
    run.add_argument("--model-revision", help="Hub revision (tag or commit) of --model")
    run.add_argument("--adapter-revision", help="Hub revision (tag or commit) of --adapter")
    run.add_argument("--compare-base", action="store_true", help="also evaluate the base, from the same loaded model")
    run.add_argument(
        "--label", help="label of the evaluated model's folder (default: silkie with an adapter, else base)"
    )
    run.add_argument("--engine", choices=("transformers", "openai"), default="transformers")
    run.add_argument(
        "--base-url",
        action="append",
        help="OpenAI-compatible server for --engine openai (vLLM, TGI, SGLang); replicas of one deployment: repeat "
        "the flag or separate them with commas",
    )
    run.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the --base-url API key")
    run.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="rows per generate call, both sides mixed (openai engine: requests in flight)",
    )
    run.add_argument("--limit", type=int, help="only the first N items of each benchmark (smoke runs)")
    run.add_argument("--prompt-family", help="prompt of the benchmark YAML to use (default: from the model type)")
    run.add_argument("--max-new-tokens", type=int, help="override the benchmark's generation length")
    run.add_argument(
        "--shard", default="0/1", metavar="I/N", help="only shard I of N of each benchmark; merge with eval assemble"
    )
    _judge_flags(run)
    run.add_argument("--out", type=Path, required=True, metavar="DIR")
    run.set_defaults(func=_run, extras=_run_extras)

    score = verbs.add_parser("score", help="score saved responses (ours or the official output layout), no model")
    score.add_argument("benchmark", choices=("mme", "mmhal", "mmvet", "redteam"))
    score.add_argument(
        "responses",
        type=Path,
        metavar="RESPONSES",
        help="responses.jsonl, or the official layout: MME folder, filled MMHal template, MM-Vet dict",
    )
    score.add_argument("--data", action="append", default=[], metavar="NAME=PATH")
    _judge_flags(score)
    score.add_argument("--out", type=Path, required=True, metavar="SCORES.json")
    score.set_defaults(func=_score, extras=lambda args: () if args.benchmark == "mme" else ("eval",))

    assemble = verbs.add_parser(
        "assemble", help="merge the --shard folders of one eval run into --out and score every benchmark"
    )
    assemble.add_argument("folders", type=Path, nargs="+", metavar="SHARD_DIR")
    _judge_flags(assemble)
    assemble.add_argument("--out", type=Path, required=True, metavar="DIR")
    assemble.set_defaults(func=_assemble, extras=("eval",))

    report = verbs.add_parser("report", help="results.json, report.md, plots and eval_results.json of eval folders")
    report.add_argument("folders", type=Path, nargs="+", metavar="DIR")
    report.add_argument("--out", type=Path, help="where to write (default: the first DIR)")
    report.add_argument("--label", help="the label whose scores go to eval_results.json (default: silkie)")
    report.set_defaults(func=_report)


def _run_extras(args: argparse.Namespace) -> tuple[str, ...]:
    """A local model needs [train] (torch, transformers, PEFT); judged benchmarks and the openai engine need
    [eval] (the openai client); MME alone on a server needs neither."""
    benchmarks = {b.strip() for b in args.benchmark.split(",")}
    local = ("train",) if args.engine == "transformers" else ()
    return local + (("eval",) if benchmarks - {"mme"} or args.engine == "openai" else ())


def _judge_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge-model", help="pinned judge snapshot (required for judged benchmarks; no default)")
    parser.add_argument(
        "--judge-base-url",
        action="append",
        help=f"the judge's endpoint (default {JUDGE_BASE_URL}); replicas of one deployment: repeat the flag or "
        "separate them with commas",
    )
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="variable holding the judge's API key")
    parser.add_argument("--judge-concurrency", type=int, default=16, help="judge requests in flight per replica")
    parser.add_argument("--runs", type=int, default=1, help="MM-Vet gradings per item (mean and std of totals)")
    parser.add_argument(
        "--max-cost",
        type=float,
        help="USD the judge ledgers of --out may hold, earlier runs included; each call reserves its estimated cost "
        "before it is sent (needs a price)",
    )
    parser.add_argument("--prices", type=Path, help="price table (default: the pipeline's prices.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="price the judge calls, make none")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _data(values: list[str]) -> dict[str, str]:
    from vlfeedback_kit.errors import UserError

    data = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise UserError(f"--data {value!r}: expected NAME=PATH, e.g. mme=MME_Benchmark_release_version")
        data[name.strip()] = path
    return data


def _judge(args: argparse.Namespace):
    from vlfeedback_kit.eval.judging import JudgeConfig

    if not args.judge_model:
        return None
    return JudgeConfig(args.judge_model, tuple(args.judge_base_url or [JUDGE_BASE_URL]), args.judge_api_key_env,
                       args.judge_concurrency, args.max_cost, args.prices, dry_run=args.dry_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.pipeline.judge import parse_shard
    from vlfeedback_kit.eval.runner import RunOptions, run
    from vlfeedback_kit.eval.shards import merge_hint

    options = RunOptions(
        benchmarks=[b.strip() for b in args.benchmark.split(",") if b.strip()], data=_data(args.data), out=args.out,
        model=args.model, adapter=args.adapter, model_revision=args.model_revision,
        adapter_revision=args.adapter_revision, compare_base=args.compare_base, engine=args.engine,
        base_url=args.base_url, api_key_env=args.api_key_env, judge=_judge(args), runs=args.runs,
        batch_size=args.batch_size, limit=args.limit, prompt_family=args.prompt_family,
        max_new_tokens=args.max_new_tokens, label=args.label, progress=not args.quiet, shard=parse_shard(args.shard),
    )  # fmt: skip
    summary = run(options)
    print(json.dumps({"out": str(args.out), "model_loads": summary["model_loads"], "generated": summary["generated"]}))
    if options.shard[1] > 1:
        print(merge_hint(args.out, options.shard))
    return _incomplete(summary["incomplete"])


def _assemble(args: argparse.Namespace) -> int:
    from vlfeedback_kit.eval.shards import assemble, read_shards

    recorded = read_shards(args.folders)[0]["options"].get("judge") or {}
    if args.judge_model is None:
        args.judge_model = recorded.get("judge_model_requested")
    if args.judge_base_url is None and recorded.get("judge_base_url"):
        args.judge_base_url = [recorded["judge_base_url"]]
    summary = assemble(args.folders, args.out, _judge(args), progress=not args.quiet)
    print(json.dumps({"out": str(args.out), "shards": len(args.folders), "generated": summary["generated"]}))
    return _incomplete(summary["incomplete"])


def _score(args: argparse.Namespace) -> int:
    from vlfeedback_kit.eval.runner import score_file
    from vlfeedback_kit.eval.scoring import incomplete_line

    data = _data(args.data)
    result = score_file(args.benchmark, args.responses, args.out, data.get(args.benchmark), _judge(args), args.runs,
                        progress=not args.quiet)  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))
    line = incomplete_line(result, args.benchmark)
    return _incomplete([line] if line else [])


def _incomplete(lines: list[str]) -> int:
    """Print each incomplete benchmark's line to stderr; the exit status (3 if any)."""
    for line in lines:
        print(f"vlfeedback eval: incomplete: {line}", file=sys.stderr)
    return INCOMPLETE if lines else 0


def _report(args: argparse.Namespace) -> int:
    from vlfeedback_kit.eval.report import report

    print(json.dumps(report(args.folders, args.out, args.label)))
    return 0
