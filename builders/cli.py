"""The ``vlfeedback`` command line: one verb per capability, each a thin layer over importable functions.

Every folder that contributes verbs has a ``commands`` module with ``register(subparsers)``; those modules import
nothing heavy at module level so that ``vlfeedback --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from builders.errors import UserError

COMMAND_MODULES: tuple[str, ...] = (
    "builders.commands",
    "builders.pipeline.commands",
    "training.commands",
    "cards.commands",
)


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered verb."""
    parser = argparse.ArgumentParser(
        prog="vlfeedback",
        description="Build, train on, evaluate and publish VLFeedback / Silkie.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlfeedback`` console script."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"vlfeedback {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
