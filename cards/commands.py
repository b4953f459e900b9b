"""CLI verbs of cards and publishing: ``card dataset|model`` and ``publish dataset|model|space``.

    vlfeedback card dataset vlfeedback
    vlfeedback card model runs/silkie --eval-results results.json
    vlfeedback publish dataset vlfeedback --repo ORG/vlfeedback --version 1.0.0 [--dry-run OUT]
    vlfeedback publish model runs/silkie --repo ORG/silkie --version 1.0.0
    vlfeedback publish space --repo ORG/arena --model BASE_ID --adapter SILKIE_ID [--votes-repo ORG/votes]

Heavy imports stay inside the verbs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from vlfeedback_kit.cards.publish import Outcome, Release


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the card and publish verbs to the ``vlfeedback`` parser."""
    card = subparsers.add_parser("card", help="render the dataset card of a built folder or the model card of a run")
    card_kinds = card.add_subparsers(dest="kind", required=True, metavar="KIND")
    dataset = card_kinds.add_parser("dataset", help="(re)write DIR/README.md and its figures in DIR/assets/")
    dataset.add_argument("folder", type=Path, metavar="DIR", help="a folder written by `vlfeedback build`")
    dataset.add_argument("--repo", metavar="ORG/NAME", help="Hub repo the loading snippets name (default ORG/NAME)")
    _dataset_options(dataset)
    dataset.set_defaults(func=_card_dataset)
    model = card_kinds.add_parser("model", help="(re)write RUN_DIR/README.md from run_info.json and the curves")
    model.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run dir")
    _model_options(model)
    model.add_argument("--repo", metavar="ORG/NAME", help="Hub repo the quick start loads (default: the folder)")
    model.set_defaults(func=_card_model)

    publish = subparsers.add_parser("publish", help="publish a dataset folder or a run dir as a tagged Hub release")
    publish_kinds = publish.add_subparsers(dest="kind", required=True, metavar="KIND")
    dataset = publish_kinds.add_parser("dataset", help="publish a built folder: changelog, card, one commit, tag")
    dataset.add_argument("folder", type=Path, metavar="DIR", help="a folder written by `vlfeedback build`")
    _release_options(dataset)
    dataset.add_argument(
        "--include-rejects", action="store_true", help="also upload rejects.jsonl (local-only by default)"
    )
    _dataset_options(dataset)
    dataset.set_defaults(func=_publish_dataset)
    model = publish_kinds.add_parser("model", help="publish a run dir: card, one commit, tag")
    model.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run dir")
    _release_options(model)
    _model_options(model)
    model.set_defaults(func=_publish_model)
    _register_publish_space(publish_kinds)


def _release_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub repo to publish to (created if new)")
    parser.add_argument("--version", required=True, metavar="X.Y.Z", help="release version; tagged vX.Y.Z")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default="main", metavar="BRANCH", help="branch to commit to (default main)")
    parser.add_argument(
        "--dry-run", type=Path, metavar="OUT", help="write the exact repo tree to OUT and upload nothing"
    )


def _dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--license",
        metavar="ID",
        help="license id the card states (default: cc-by-nc-4.0 for the original VLFeedback release, none otherwise)",
    )
    parser.add_argument(
        "--pretty-name",
        metavar="NAME",
        help="the card's title and pretty_name (default: VLFeedback for the original release, else from the source)",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-results", type=Path, metavar="FILE", help="eval-results JSON (default: RUN_DIR/eval_results.json)"
    )
    parser.add_argument(
        "--license",
        metavar="ID",
        help="license id of the weights (default: cc-by-nc-4.0 when trained on the original VLFeedback release or "
        "on a dataset whose origin was not recorded; none otherwise)",
    )


def _card_dataset(args: argparse.Namespace) -> int:
    from vlfeedback_kit.cards.dataset import render_dataset_card

    card = render_dataset_card(args.folder, repo_id=args.repo, license=args.license, pretty_name=args.pretty_name)
    card.save(args.folder / "README.md")
    print(f"wrote {args.folder / 'README.md'} and its figures in {args.folder / 'assets'}")
    return 0


def _card_model(args: argparse.Namespace) -> int:
    from vlfeedback_kit.cards.model import render_model_card

    card = render_model_card(args.run_dir, repo_id=args.repo, eval_results=args.eval_results, license=args.license)
    card.save(args.run_dir / "README.md")
    print(f"wrote {args.run_dir / 'README.md'}")
    return 0


def _release(args: argparse.Namespace, repo_type: str) -> Release:
    from vlfeedback_kit.cards.publish import Release

    return Release(args.repo, args.version, repo_type=repo_type, branch=args.revision, private=args.private)


def _publish_dataset(args: argparse.Namespace) -> int:
    from vlfeedback_kit.cards.publish import publish_dataset

    outcome = publish_dataset(
        args.folder,
        _release(args, "dataset"),
        dry_run=args.dry_run,
        include_rejects=args.include_rejects,
        license=args.license,
        pretty_name=args.pretty_name,
    )
    return _report(outcome)


def _publish_model(args: argparse.Namespace) -> int:
    from vlfeedback_kit.cards.publish import publish_model

    outcome = publish_model(
        args.run_dir,
        _release(args, "model"),
        dry_run=args.dry_run,
        eval_results=args.eval_results,
        license=args.license,
    )
    return _report(outcome)


def _report(outcome: Outcome) -> int:
    release = outcome.release
    previous = f"previous release {outcome.previous}" if outcome.previous else "first release"
    print(outcome.description)
    if outcome.hub_unread:
        changelog = (
            "the changelog against the Hub was skipped" if release.repo_type == "dataset" else "no versions read"
        )
        print(
            f"the Hub could not be read, so this dry run plans a first release ({changelog}; card metadata not "
            "validated by the Hub): "
            f"{outcome.hub_unread}"
        )
    if outcome.dry_run is not None:
        print(
            f"dry run: wrote the {len(outcome.files)}-file tree of {release.repo_id} {release.tag} to "
            f"{outcome.dry_run} ({previous}); nothing was uploaded"
        )
        if outcome.deleted:
            print(f"the commit would also delete {len(outcome.deleted)} stale file(s): {', '.join(outcome.deleted)}")
        return 0
    deleted = f", {len(outcome.deleted)} stale file(s) deleted" if outcome.deleted else ""
    print(
        f"published {release.repo_id} {release.tag}: commit {outcome.commit[:12]} on {release.branch!r}, "
        f"{len(outcome.files)} files{deleted} ({previous})"
    )
    print("load it:")
    for line in outcome.usage:
        print(f"  {line}")
    return 0


def _register_publish_space(publish_kinds: argparse._SubParsersAction) -> None:
    """``publish space``: the Silkie-vs-base Space (vlfeedback_kit.eval.arena.publish)."""
    space = publish_kinds.add_parser("space", help="publish the Silkie-vs-base Space: one commit, variables set")
    space.add_argument("--repo", required=True, metavar="ORG/NAME", help="Space repo (created if new)")
    space.add_argument("--model", required=True, metavar="BASE_ID", help="base model repo id")
    space.add_argument("--adapter", required=True, metavar="SILKIE_ID", help="Silkie adapter repo id")
    space.add_argument("--model-revision", help="base model revision (default: main)")
    space.add_argument("--adapter-revision", help="adapter revision (default: main)")
    space.add_argument("--votes-repo", metavar="ORG/NAME", help="dataset repo the votes are pushed to")
    space.add_argument("--public-votes", action="store_true",
                       help="create the votes repo public (default private: votes hold prompts and images)")
    space.add_argument("--votes-token-env", metavar="VAR",
                       help="set the Space secret HF_TOKEN from this environment variable: a write token for "
                            "--votes-repo (best fine-grained to that repo only); without it votes are not kept")
    space.add_argument("--hardware", metavar="FLAVOR", help="hardware to request, e.g. zero-a10g, t4-small")
    space.add_argument("--private", action="store_true", help="create the Space private")
    space.add_argument("--dry-run", type=Path, metavar="OUT", help="write the Space's tree to OUT, upload nothing")
    space.set_defaults(func=_publish_space)


def _publish_space(args: argparse.Namespace) -> int:
    from vlfeedback_kit.eval.arena.publish import SpaceRelease, publish_space

    token = None
    if args.votes_token_env:
        if not args.votes_repo:
            raise UserError("--votes-token-env gives the Space a token to push votes: add --votes-repo ORG/NAME")
        token = os.environ.get(args.votes_token_env)
        if not token:
            raise UserError(f"--votes-token-env {args.votes_token_env}: that variable is not set; export a write "
                            "token for the votes repo in it")  # fmt: skip
    release = SpaceRelease(args.repo, args.model, args.adapter, args.votes_repo, args.hardware, args.model_revision,
                           args.adapter_revision, args.private or None, args.public_votes, token)  # fmt: skip
    url, files = publish_space(release, args.dry_run)
    if args.dry_run is not None:
        print(
            f"dry run: wrote the {len(files)}-file tree of Space {args.repo} to {args.dry_run}; nothing was uploaded"
        )
    else:
        print(f"published {len(files)} files in one commit; variables set: {', '.join(release.variables())}")
    print(url)
    return 0
