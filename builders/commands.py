"""CLI verbs of the dataset: ``sample``, ``build``, ``pairs``, ``inspect``. Heavy imports stay inside the verbs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlfeedback_kit.errors import UserError

PAIRS_HELP = (
    "extra pairing config: a preset (best-vs-worst, best-vs-random, best-vs-all, margin-1, length-balanced) or "
    "NAME:key=value,... with keys strategy, aggregation, weights, min_margin, max_pairs_per_prompt, "
    "max_length_ratio, seed (e.g. 'gap2:strategy=best-vs-all,min_margin=2'); repeatable"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the dataset verbs to the ``vlfeedback`` parser."""
    sample = subparsers.add_parser("sample", help="write the embedded sample in the original release layout")
    sample.add_argument("--out", required=True, type=Path, help="folder to write (jsonl + merged_images/)")
    sample.add_argument("--num-instructions", type=int, default=300, help="instructions to generate (default 300)")
    sample.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing sample")
    sample.set_defaults(func=_sample)

    build = subparsers.add_parser("build", help="ingest a release into a Hub-ready dataset folder")
    build.add_argument("--source", required=True, help="release folder, .jsonl, Parquet file/folder, or Hub id")
    build.add_argument("--out", type=Path, default=Path("vlfeedback"), help="output folder (default ./vlfeedback)")
    build.add_argument("--revision", help="Hub revision (branch, tag or commit) when --source is a Hub id")
    build.add_argument("--pairs", action="append", default=[], metavar="SPEC", help=PAIRS_HELP)
    build.add_argument(
        "--max-reject-rate", type=float, default=0.05, help="fail above this share of rejects (default 0.05)"
    )
    build.add_argument(
        "--eval-fraction",
        type=float,
        default=0.0,
        help="hold out about this share of instructions as a test split in every config (the paper: 0.005); "
        "an instruction is held out when a seeded hash of its id falls below the fraction, so the split is stable "
        "as the dataset grows and the count is near, not exactly, the fraction (0.1 held out 23 of 300 on the "
        "sample) (default 0, no test split)",
    )
    build.add_argument("--eval-seed", type=int, default=42, help="seed of the held-out split's hash (default 42)")
    build.add_argument(
        "--verify-images",
        choices=("header", "decode"),
        default="header",
        help="header: parse headers and check JPEG completeness (fast); decode: decode every pixel (default header)",
    )
    build.add_argument("--batch-size", type=int, default=256, help="rows per processing batch (default 256)")
    build.add_argument("--max-shard-mb", type=int, default=500, help="Parquet shard size limit in MB (default 500)")
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier build in --out (a folder with build_report.json); files a build does not write, "
        "such as .ref_logps/, are kept",
    )
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    pairs = subparsers.add_parser("pairs", help="add (or preview) a pairing config of a built folder")
    pairs.add_argument("folder", type=Path, help="a folder written by `vlfeedback build`")
    pairs.add_argument("spec", metavar="SPEC", help=PAIRS_HELP.replace("; repeatable", ""))
    pairs.add_argument(
        "--dry-run", action="store_true", help="print the counts, write nothing (any name, an existing one too)"
    )
    pairs.add_argument(
        "--overwrite", action="store_true", help="replace an extra config of the same name (never raw or pairs)"
    )
    pairs.set_defaults(func=_pairs)

    inspect = subparsers.add_parser("inspect", help="what to know about a built folder or Hub repo before training")
    inspect.add_argument("target", help="a built folder or a Hub dataset id")
    inspect.add_argument("--revision", help="Hub revision when target is a Hub id")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_inspect)


def _parse_policies(specs: list[str]) -> dict:
    from vlfeedback_kit.builders.pairing import parse_policy_spec

    policies = {}
    for spec in specs:
        try:
            name, policy = parse_policy_spec(spec)
        except ValueError as err:
            raise UserError(f"--pairs {spec!r}: {err}") from err
        if name in policies:
            raise UserError(f"--pairs names config {name!r} twice")
        policies[name] = policy
    return policies


def _sample(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.sample import write_sample

    summary = write_sample(args.out, num_instructions=args.num_instructions, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {summary['instructions']} instructions in the original release layout to {args.out}")
    print(f"next: vlfeedback build --source {args.out} --out vlfeedback")
    return 0


def _build(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.cards.dataset import write_dataset_card

    options = BuildOptions(
        source=args.source,
        out_dir=args.out,
        policies=_parse_policies(args.pairs),
        revision=args.revision,
        max_reject_rate=args.max_reject_rate,
        eval_fraction=args.eval_fraction,
        eval_seed=args.eval_seed,
        verify_images=args.verify_images,
        batch_size=args.batch_size,
        max_shard_bytes=args.max_shard_mb * 1024**2,
        overwrite=args.overwrite,
        progress=not args.quiet,
        card=write_dataset_card,
    )
    report = build(options)
    print(
        f"read {report['read']} rows: kept {report['kept']}, rejected {report['rejected']}"
        f"{' ' + json.dumps(report['reasons']) if report['reasons'] else ''} in {report['seconds']:.1f}s "
        f"({report['rows_per_second']} rows/s)"
    )
    for config, splits in report["splits"].items():
        print(f"  {config:<16} {', '.join(f'{s}: {n}' for s, n in splits.items())}")
    out = args.out
    load_from = f'"{out.name}"' if out.parent == Path(".") else f'"{out}"'
    print(f"Hub-ready dataset: {out.resolve()}")
    print(f'load it: from datasets import load_dataset; load_dataset({load_from}, "pairs")')
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.hub_folder import add_pairing_config
    from vlfeedback_kit.cards.dataset import write_dataset_card

    ((name, policy),) = _parse_policies([args.spec]).items()
    record = add_pairing_config(
        args.folder, name, policy, dry_run=args.dry_run, overwrite=args.overwrite, card=write_dataset_card
    )
    action = "would write" if args.dry_run else "wrote"
    print(f"{action} config {name!r}: {record['counts']['pairs']} pairs; counts {json.dumps(record['counts'])}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vlfeedback_kit.builders.inspect import format_summary, summarize

    summary = summarize(args.target, revision=args.revision)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0
