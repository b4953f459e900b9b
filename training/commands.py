"""CLI verbs of training: ``train`` and ``tiny-model``. Heavy imports stay inside the verbs."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.training.tiny_model import FAMILIES, build_tiny_model

HERE = Path(__file__).parent
RECIPES = HERE / "recipes"
ACCELERATE = HERE / "accelerate"


def names(folder: Path) -> list[str]:
    """The recipe or accelerate-config names available in a folder (file stems)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def launch_command(recipe: str, accelerate: str, overrides: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that ``vlfeedback train`` runs."""
    recipe_path = Path(recipe) if recipe.endswith(".yaml") else RECIPES / f"{recipe}.yaml"
    config_path = Path(accelerate) if accelerate.endswith(".yaml") else ACCELERATE / f"{accelerate}.yaml"
    for path, kind, folder in ((recipe_path, "recipe", RECIPES), (config_path, "accelerate config", ACCELERATE)):
        if not path.is_file():
            raise UserError(f"no {kind} {path.stem!r}; choose one of {', '.join(names(folder))} or pass a .yaml path")
    launcher = shutil.which("accelerate")
    prefix = [launcher] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    if launcher:
        prefix.append("launch")
    return [*prefix, "--config_file", str(config_path), str(HERE / "dpo.py"), "--config", str(recipe_path), *overrides]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training verbs to the ``vlfeedback`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train Silkie: accelerate launch of training/dpo.py with a recipe",
        description="Extra arguments after the options are TRL flags that override the recipe, e.g. --max_steps 10.",
    )
    train.add_argument("--recipe", required=True, help=f"recipe name ({', '.join(names(RECIPES))}) or a .yaml path")
    train.add_argument(
        "--accelerate",
        default=None,
        help=f"accelerate config ({', '.join(names(ACCELERATE))}); default: "
        "single_gpu when a GPU is visible, else cpu",
    )
    train.add_argument("--print-command", action="store_true", help="print the launch command and exit")
    train.set_defaults(func=_train, accepts_extra=True, extras=("train",))
    tiny = subparsers.add_parser(
        "tiny-model",
        help="build a tiny random vision-language model of a real family, offline, for tests and smoke runs",
    )
    tiny.add_argument("--family", required=True, choices=FAMILIES, help="architecture to build")
    tiny.add_argument("--out", required=True, type=Path, help="folder to write (model, processor, tokenizer)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.set_defaults(func=_tiny_model, extras=("train",))


def _train(args: argparse.Namespace) -> int:
    accelerate = args.accelerate
    if accelerate is None:
        import torch

        accelerate = "single_gpu" if torch.cuda.is_available() else "cpu"
    command = launch_command(args.recipe, accelerate, args.extra)
    print(" ".join(command), flush=True)
    if args.print_command:
        return 0
    return subprocess.run(command).returncode


def _tiny_model(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    out = build_tiny_model(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random {args.family} model (seed {args.seed}) to {out}")
    print("load it offline with:")
    print("  from transformers import AutoModelForImageTextToText, AutoProcessor")
    print(f"  processor = AutoProcessor.from_pretrained({str(out)!r})")
    print(f"  model = AutoModelForImageTextToText.from_pretrained({str(out)!r})")
    return 0
