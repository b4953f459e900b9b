"""MkDocs hook: the command-line reference pages, rendered from the kit's argparse parsers at build time.

The pages are never written by hand, so they cannot drift from the code: each verb's (and sub-verb's) usage and
options are what ``vlfeedback VERB --help`` prints, each benchmark's what ``python -m MODULE --help`` prints, and the
training script's flags what ``training/dpo.py --help`` prints. The hook also serves two repository files as site
pages without copying them into ``docs/``: BENCHMARKS.md and the arena's screenshot.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

CLI_PAGE = "cli.md"
TRAINING_FLAGS_PAGE = "training-flags.md"
TOOLS = (
    "vlfeedback_kit.builders.bench",
    "vlfeedback_kit.builders.pipeline.bench",
    "vlfeedback_kit.training.bench",
    "vlfeedback_kit.training.memory",
    "vlfeedback_kit.eval.bench",
    "vlfeedback_kit.eval.arena.bench",
)
"""Modules run as ``python -m MODULE``, each with a ``make_parser()``."""
WIDTH = 110
"""Help text width, fixed so the page does not depend on the terminal that runs the build."""
FROM_REPOSITORY = {
    "benchmarks.md": "BENCHMARKS.md",
    "assets/arena-screenshot.png": "spaces/silkie-vs-base/screenshot.png",
}
"""Site path → repository file served as it is."""


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-verb of a parser, in the order ``--help`` lists them."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not actions:
        return []
    helps = {choice.dest: choice.help or "" for choice in actions[0]._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in actions[0].choices.items()]


def help_text(parser: argparse.ArgumentParser) -> str:
    """What ``--help`` prints for this parser, at a fixed width."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    return parser.format_help().rstrip()


def verb_section(prog: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    """A heading, the verb's one-line summary and its help; then each sub-verb one level down."""
    lines = [f"{'#' * level} `{prog}`", "", summary, "", "```text", help_text(parser), "```", ""]
    for name, sub_summary, sub in subcommands(parser):
        lines += verb_section(f"{prog} {name}", sub_summary, sub, level + 1)
    return lines


def render() -> str:
    """The whole reference page (Markdown)."""
    from vlfeedback_kit.cli import make_parser

    parser, _, unavailable = make_parser()
    verbs = subcommands(parser)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `vlfeedback` parsers (`vlfeedback_kit.cli.make_parser`) when the site is built: each",
        "block is what `vlfeedback VERB --help` prints. `vlfeedback train` passes any further flag to",
        "`training/dpo.py`: [Training script flags](training-flags.md). The benchmarks' flags close the page.",
        "",
        "| verb | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#vlfeedback-{name}) | {summary} |" for name, summary, _ in verbs),
        "",
    ]
    if unavailable:
        lines += ["!!! warning", f"    Verbs missing from this build: {' | '.join(unavailable)}", ""]
    lines += ["```text", help_text(parser), "```", ""]
    for name, summary, sub in verbs:
        lines += verb_section(f"vlfeedback {name}", summary, sub, 2)
    lines += [
        "## Benchmarks and tools",
        "",
        "Each measures or counts one thing; results: [Performance](performance.md).",
        "",
    ]
    for module_name in TOOLS:
        tool = importlib.import_module(module_name).make_parser()
        tool.prog = f"python -m {module_name}"
        lines += ["```text", help_text(tool), "```", ""]
    return "\n".join(lines)


def render_training_flags() -> str:
    """The training script's page: TRL's parser over the script's dataclasses, every flag a recipe may set."""
    from vlfeedback_kit.training.dpo import make_parser

    return "\n".join(
        [
            "# Training script flags",
            "",
            "Generated from `training/dpo.py`'s parser (TRL's `TrlParser` over `SilkieScriptArguments`,",
            "`SilkieDPOConfig` and `ModelConfig`) when the site is built. A recipe YAML sets these fields, and any",
            "of them overrides the recipe on the command line of `accelerate launch training/dpo.py` or",
            "`vlfeedback train` (see [Train Silkie](training.md)); no flag may be abbreviated.",
            "",
            "```text",
            help_text(make_parser(prog="training/dpo.py")),
            "```",
            "",
        ]
    )


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated CLI page and the repository files the docs link to."""
    root = Path(config.config_file_path).parent
    files.append(File.generated(config, CLI_PAGE, content=render()))
    files.append(File.generated(config, TRAINING_FLAGS_PAGE, content=render_training_flags()))
    for site_path, repository_path in FROM_REPOSITORY.items():
        files.append(File.generated(config, site_path, abs_src_path=str(root / repository_path)))
    return files
