"""``vlfeedback space``: the Silkie-vs-base arena on this machine (CPU is fine), the same app the Space runs.

vlfeedback space                                   # the README's tiny Qwen2-VL + runs/silkie-tiny, on CPU
vlfeedback space --adapter ORG/silkie --model Qwen/Qwen2-VL-2B-Instruct --votes-repo ORG/silkie-arena-votes
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``space`` to the ``vlfeedback`` parser."""
    space = subparsers.add_parser("space", help="launch the Silkie-vs-base arena locally (blind battle, votes, board)")
    space.add_argument("--adapter", help="Silkie adapter id or run dir (default: runs/silkie-tiny, or ARENA_ADAPTER)")
    space.add_argument("--model", help="base model id or folder (default: the adapter run dir's base)")
    space.add_argument("--model-revision")
    space.add_argument("--adapter-revision")
    space.add_argument(
        "--votes-repo", metavar="ORG/NAME", help="push votes to this dataset repo (needs HF_TOKEN; default: local)"
    )
    space.add_argument("--public-votes", action="store_true",
                       help="create the votes repo public; by default it is private, as votes hold each visitor's "
                            "prompt and image (ARENA_PUBLIC_VOTES=1)")  # fmt: skip
    space.add_argument("--votes-dir", help="local votes folder (default: arena-votes)")
    space.add_argument("--examples-dir", help="a built VLFeedback folder whose held-out split gives examples")
    space.add_argument("--max-new-tokens", type=int)
    space.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    space.add_argument("--port", type=int, default=7860)
    space.set_defaults(func=_space, extras=("space", "train"))

    items = subparsers.add_parser("space-votes", help="the Space's voted battles as items for `vlfeedback annotate`")
    items.add_argument("votes", metavar="VOTES", help="a votes folder or its Hub dataset id")
    items.add_argument("--out", type=Path, required=True, help="folder to write (responses.jsonl + merged_images/)")
    items.set_defaults(func=_space_votes)


def gpu_decorator() -> Callable:
    """``spaces.GPU`` where Hugging Face's ``spaces`` package is installed (ZeroGPU), else the no-op ``no_gpu``.

    Imported before torch touches CUDA, as ZeroGPU needs. Run from the kit's checkout, ``import spaces`` finds its
    ``spaces/`` folder of Space apps instead (a namespace package, without ``GPU``): that is not the package either.
    """
    try:
        import spaces
    except ImportError:
        spaces = None
    gpu = getattr(spaces, "GPU", None)
    if gpu is None:
        from vlfeedback_kit.eval.arena.ui import no_gpu as gpu
    return gpu


def _space(args: argparse.Namespace) -> int:
    gpu = gpu_decorator()
    from vlfeedback_kit.eval.arena.config import ArenaConfig
    from vlfeedback_kit.eval.arena.ui import create_app, launch_options

    config = ArenaConfig.from_env(
        model=args.model, model_revision=args.model_revision, adapter=args.adapter,
        adapter_revision=args.adapter_revision, votes_repo=args.votes_repo, votes_dir=args.votes_dir,
        examples_dir=args.examples_dir, max_new_tokens=args.max_new_tokens, public_votes=args.public_votes or None,
    )  # fmt: skip
    demo, store = create_app(config, gpu=gpu)
    print(f"Silkie ({config.adapter}) vs its base; votes are {store.where().replace('**', '')}")
    demo.launch(server_name=args.host, server_port=args.port, **launch_options(config))
    return 0


def _space_votes(args: argparse.Namespace) -> int:
    from vlfeedback_kit.eval.arena.items import votes_to_items

    count = votes_to_items(args.votes, args.out)
    print(f"wrote {count} blind battles to {args.out / 'responses.jsonl'} (votes naming a model left out)")
    return 0
