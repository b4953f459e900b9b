"""The ``vlfeedback rounds`` verb: on-policy rounds (generate, judge, build, train, evaluate), resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rounds`` to the ``vlfeedback`` parser."""
    rounds = subparsers.add_parser(
        "rounds",
        help="on-policy rounds: the policy generates, the judge rates, the next round trains (resumable)",
        description="Run RLAIF-V-style on-policy DPO rounds from a config (see docs/rounds.md); re-run the same "
        "command to resume after an interruption: nothing finished is redone or paid twice.",
    )
    rounds.add_argument("--config", type=Path, required=True, help="rounds.yaml")
    rounds.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    rounds.add_argument("--rounds", type=int, help="run this many rounds in all (extends a finished run)")
    rounds.add_argument(
        "--engine",
        choices=("transformers", "openai"),
        help="generation engine (overrides the config's `engine`): openai samples from the vLLM server at the "
        "config's engine_base_url, which serves the base and each round's adapter by name",
    )
    rounds.add_argument("--dry-run", action="store_true", help="print what each round would do and its cost; no work")
    rounds.add_argument("--quiet", action="store_true", help="no progress bars")
    rounds.add_argument(
        "--publish-dataset", metavar="ORG/NAME", help="then publish OUT/dataset (every round's configs) as v0.N.0"
    )
    rounds.add_argument(
        "--publish-model",
        metavar="ORG/NAME",
        help="then publish round k's adapter as v0.k.0, its card naming its lineage",
    )
    rounds.add_argument("--publish-dry-run", type=Path, metavar="DIR", help="write the release trees here; no upload")
    rounds.set_defaults(func=_rounds, extras=("train", "pipeline", "eval"))


def _rounds(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vlfeedback_kit.errors import UserError
    from vlfeedback_kit.rounds.config import check, load_config
    from vlfeedback_kit.rounds.loop import run_rounds
    from vlfeedback_kit.rounds.plan import dry_run

    config = load_config(args.config)
    if args.rounds is not None:
        if args.rounds < 1:
            raise UserError("--rounds must be at least 1")
        config = replace(config, rounds=args.rounds)
    if args.engine is not None:
        config = replace(config, engine=args.engine)
        check(config, str(args.config))
    if args.dry_run:
        print(json.dumps(dry_run(config, args.out), indent=2))
        return 0
    result = run_rounds(config, args.out, progress=not args.quiet)
    for entry in result["rounds"]:
        base, low, high = entry["vs_base"]["win_rate"], *entry["vs_base"]["win_rate_ci"]
        print(f"round {entry['round']}: {entry['pairs']} pairs; win rate vs base {base:.3f} [{low:.3f}, {high:.3f}]")
    print(f"best round by {result['pick_by']}: {result['best_round']}; report: {args.out / 'report.md'}")
    _publish(args, config)
    return 0


def _publish(args: argparse.Namespace, config) -> None:
    from vlfeedback_kit.rounds.publish import publish_dataset_version, publish_round_models

    dry_run = args.publish_dry_run
    if args.publish_dataset:
        outcome = publish_dataset_version(args.out, args.publish_dataset, dry_run / "dataset" if dry_run else None)
        print(f"dataset: {args.publish_dataset} " + (f"{outcome.release.tag} ({'dry run' if dry_run else 'published'})"
                                                     if outcome else "already published"))  # fmt: skip
    if args.publish_model:
        records = json.loads((args.out / "dataset" / "rounds.json").read_text(encoding="utf-8"))["rounds"]
        outcomes = publish_round_models(args.out, config, records, args.publish_model, args.publish_dataset,
                                        dry_run / "models" if dry_run else None)  # fmt: skip
        tags = ", ".join(o.release.tag for o in outcomes) or "none (every round is published)"
        print(f"model: {args.publish_model} {tags}" + (" (dry run)" if dry_run else ""))
