"""The ``vlfeedback`` command line: one verb per capability, each a thin layer over importable functions.

Every folder that contributes verbs has a ``commands`` module with ``register(subparsers)``; those modules import
nothing heavy at module level so that ``vlfeedback --help`` stays instant and works on the core install. A verb
declares the extras it needs (``set_defaults(extras=("train",))``, or a function of the parsed arguments); a
missing one is one line naming the ``pip install`` to run, never an ImportError traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.extras import IncompatibleVersion, MissingExtra, extra_of, require

COMMAND_MODULES: tuple[str, ...] = (
    "vlfeedback_kit.builders.commands",
    "vlfeedback_kit.builders.pipeline.commands",
    "vlfeedback_kit.training.commands",
    "vlfeedback_kit.eval.commands",
    "vlfeedback_kit.eval.arena.commands",
    "vlfeedback_kit.cards.commands",
    "vlfeedback_kit.rounds.commands",
)


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations: a shortened or misspelled flag is refused, never taken for another flag.
    Every verb's parser (and any nested one) is of this class, since ``add_subparsers`` makes its parent's class;
    so is each benchmark's ``make_parser()`` (this module imports nothing heavy at load time)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})


def make_parser() -> tuple[argparse.ArgumentParser, set[str], list[str]]:
    """The top-level parser with every verb that could be registered, their names, and the one-line reasons of
    the folders whose verbs could not be (a dependency outside its supported versions)."""
    parser = Parser(
        prog="vlfeedback",
        description="Build, train on, evaluate and publish VLFeedback / Silkie.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    unavailable = []
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except IncompatibleVersion as err:
            unavailable.append(str(err))
            continue
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a folder without verbs yet is fine; a broken import is not
                raise
            continue
        module.register(subparsers)
    if unavailable:
        parser.epilog = "unavailable verbs: " + " | ".join(unavailable)
    return parser, set(subparsers.choices), unavailable


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlfeedback`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    parser, verbs, unavailable = make_parser()
    if unavailable and argv and not argv[0].startswith("-") and argv[0] not in verbs:
        for reason in unavailable:
            print(f"vlfeedback {argv[0]}: error: {reason}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        extras = getattr(args, "extras", ())
        require(f"vlfeedback {args.verb}", *(extras(args) if callable(extras) else extras))
        return int(args.func(args) or 0)
    except (UserError, MissingExtra) as err:
        print(f"vlfeedback {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = extra_of(err.name or "")
        if extra is None:
            raise
        print(f"vlfeedback {args.verb}: error: {MissingExtra(f'vlfeedback {args.verb}', extra, [err.name])}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
