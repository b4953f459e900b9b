"""CLI verbs of training: ``tiny-model``. Heavy imports stay inside the verbs."""

from __future__ import annotations

import argparse
from pathlib import Path

from builders.errors import UserError
from training.tiny_model import FAMILIES, build_tiny_model


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training verbs to the ``vlfeedback`` parser."""
    tiny = subparsers.add_parser(
        "tiny-model",
        help="build a tiny random vision-language model of a real family, offline, for tests and smoke runs",
    )
    tiny.add_argument("--family", required=True, choices=FAMILIES, help="architecture to build")
    tiny.add_argument("--out", required=True, type=Path, help="folder to write (model, processor, tokenizer)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.set_defaults(func=_tiny_model)


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
