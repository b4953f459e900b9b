"""CLI verbs of training: ``train`` and ``tiny-model``. Heavy imports stay inside the verbs."""

from __future__ import annotations

import argparse
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


def yaml_file(name: str, kind: str, folder: Path) -> Path:
    """A recipe or accelerate config given by name (a file of ``folder``) or as a ``.yaml`` path."""
    path = Path(name) if name.endswith(".yaml") else folder / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no {kind} {path.stem!r}; choose one of {', '.join(names(folder))} or pass a .yaml path")
    return path


def launch_command(recipe: str, accelerate: str, overrides: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that ``vlfeedback train`` runs (``--quiet``: the script's own error,
    not the launcher's traceback around it)."""
    recipe_path = yaml_file(recipe, "recipe", RECIPES)
    config_path = yaml_file(accelerate, "accelerate config", ACCELERATE)
    # this interpreter's accelerate, not whichever `accelerate` is first on PATH: another environment's launcher
    # would run another installation of the kit
    prefix = [sys.executable, "-m", "accelerate.commands.launch"]
    return [
        *prefix, "--quiet", "--config_file", str(config_path),
        str(HERE / "dpo.py"), "--config", str(recipe_path), *overrides,
    ]  # fmt: skip


def check_arguments(recipe: str, overrides: list[str], accelerate: str | None = None) -> list[str]:
    """Parse the recipe and overrides with the script's own parser and check the checkpoint to resume from, the
    output folder, the dataset, model and starting adapter names and the dataset config, so a misspelled flag, a
    missing checkpoint, a run about to be replaced, a typo in a name or the ``raw`` config is one line here rather
    than a traceback after the launch. With ``accelerate`` the accelerate config is validated against the recipe too
    (``distributed.check_launch``); the returned lines say what the launch becomes where that differs from the config.
    The parse runs in a short child process: building TrainingArguments sets up the accelerator, which the launcher's
    parent must not hold (a CUDA context on GPU 0 for the whole run)."""
    code = "import sys\nfrom vlfeedback_kit.training.commands import check_here\nsys.exit(check_here(sys.argv[1:]))"
    recipe_path = str(yaml_file(recipe, "recipe", RECIPES))
    config = str(yaml_file(accelerate, "accelerate config", ACCELERATE)) if accelerate else ""
    done = subprocess.run(
        [sys.executable, "-c", code, config, recipe_path, *overrides], capture_output=True, text=True
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"the recipe and flags do not parse (exit {done.returncode})"]
        raise UserError(lines[-1])
    return done.stdout.splitlines()


def check_here(argv: list[str]) -> int:
    """:func:`check_arguments` in this process (``argv``: the accelerate config or "", the recipe, the overrides): 0
    with the launch notes on stdout, or 2 with the one-line reason on stderr."""
    import torch

    from vlfeedback_kit.training.distributed import check_launch
    from vlfeedback_kit.training.dpo import check_output_dir, check_sources, parse_arguments, resume_checkpoint
    from vlfeedback_kit.training.init_adapter import resolve_init

    try:
        script_args, training_args, model_args = parse_arguments(["--config", argv[1], *argv[2:]])
        notes = check_launch(argv[0], training_args, model_args, torch.cuda.is_available()) if argv[0] else []
        check_output_dir(training_args, resume_checkpoint(training_args))
        check_sources(script_args, model_args, resolve=True)
        resolve_init(training_args)
    except UserError as err:
        print(err, file=sys.stderr)
        return 2
    print("\n".join(notes))
    return 0


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
    tiny.add_argument(
        "--overwrite", action="store_true", help="replace the model files of a non-empty --out (default: refuse)"
    )
    tiny.set_defaults(func=_tiny_model, extras=("train",))


def _train(args: argparse.Namespace) -> int:
    accelerate = args.accelerate
    if accelerate is None:
        import torch

        accelerate = "single_gpu" if torch.cuda.is_available() else "cpu"
    command = launch_command(args.recipe, accelerate, args.extra)
    notes = check_arguments(args.recipe, args.extra, accelerate)
    print(" ".join(command), flush=True)
    for note in filter(None, notes):
        print(f"note: {note}", flush=True)
    if args.print_command:
        return 0
    return subprocess.run(command).returncode


def _tiny_model(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {args.out} is not empty; pass --overwrite to replace its model, or choose another")
    out = build_tiny_model(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random {args.family} model (seed {args.seed}) to {out}")
    print("load it offline with:")
    print("  from transformers import AutoModelForImageTextToText, AutoProcessor")
    print(f"  processor = AutoProcessor.from_pretrained({str(out)!r})")
    print(f"  model = AutoModelForImageTextToText.from_pretrained({str(out)!r})")
    return 0
