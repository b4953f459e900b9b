"""Publish a built dataset folder or a training run dir to the Hub as a versioned release.

A release is one commit and one tag: create the repo (``exist_ok``), render the card for this release, commit
every file of the folder (and delete what the branch holds beyond it, so the tag's tree is exactly the folder) in
a single ``create_commit``, then tag it ``vX.Y.Z`` — only once the commit has landed. A version must be new and
greater than every ``vX.Y.Z`` tag on the repo. The dataset card gets a changelog entry comparing the folder with
the previous tag. ``dry_run`` writes the exact tree that would be committed into a folder and uploads nothing.

The token is never handled here: ``huggingface_hub`` reads it from ``HF_TOKEN`` or the saved login.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlfeedback_kit.errors import UserError, hub_error, is_hub_error

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DATASET_EXCLUDE: tuple[str, ...] = ("rejects.jsonl", ".*", "*/.*")
"""Local-only files of a built folder: ``rejects.jsonl`` holds the raw rejected input rows (their counts and reasons
stay in ``build_report.json``), and hidden files or folders (``data/.<config>.partial`` staging).
``--include-rejects`` uploads the rejects too."""
MODEL_EXCLUDE: tuple[str, ...] = (
    ".*",
    "*/.*",
    "checkpoint-*",
    "runs/*",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
)
"""Training state that is no part of a model release: intermediate checkpoints, logs, optimizer and RNG states,
pickled training arguments."""
VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
KEEP_ON_HUB = frozenset({".gitattributes"})


@dataclass
class Release:
    """Where and as what a folder is published."""

    repo_id: str
    version: str
    repo_type: str = "dataset"
    branch: str = "main"
    private: bool = False

    def __post_init__(self) -> None:
        if not VERSION.fullmatch(self.version):
            raise UserError(f"--version {self.version!r} must be X.Y.Z (semantic version, e.g. 1.0.0)")
        self.version = self.version.removeprefix("v")
        if self.repo_id.count("/") != 1:
            raise UserError(f"--repo {self.repo_id!r} must be ORG/NAME")

    @property
    def tag(self) -> str:
        """The git tag of this release: ``vX.Y.Z``."""
        return f"v{self.version}"


@dataclass
class HubState:
    """What the repo holds before the release: whether it exists, its version tags, the branch head and files."""

    exists: bool = False
    tags: list[str] = field(default_factory=list)
    head: str | None = None
    branch_exists: bool = False
    files: list[str] = field(default_factory=list)
    private: bool | None = None


@dataclass
class Outcome:
    """What a publish did (or, in a dry run, would do)."""

    release: Release
    previous: str | None
    description: str
    usage: list[str]
    files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commit: str | None = None
    dry_run: Path | None = None
    hub_unread: str | None = None
    """Why a dry run could not read the repo on the Hub (it then plans a first release); None when it could."""


def version_key(tag: str) -> tuple[int, int, int] | None:
    """``(X, Y, Z)`` of a ``vX.Y.Z`` tag; None for any other tag."""
    match = VERSION.fullmatch(tag)
    return tuple(int(part) for part in match.groups()) if match and tag.startswith("v") else None


def previous_version(tags: list[str], release: Release) -> str | None:
    """The latest ``vX.Y.Z`` tag, after checking ``release`` is new and greater; None for a first release."""
    if release.tag in tags:
        raise UserError(
            f"{release.repo_id} already has tag {release.tag}; a published version is never overwritten — "
            "publish a new version instead"
        )
    versions = sorted((key, tag) for tag in tags if (key := version_key(tag)) is not None)
    if versions and version_key(release.tag) <= versions[-1][0]:
        raise UserError(
            f"version {release.version} is not greater than the latest release {versions[-1][1]} of "
            f"{release.repo_id}; pick a higher version"
        )
    return versions[-1][1] if versions else None


def upload_plan(folder: Path, exclude: tuple[str, ...], readme: bytes) -> dict[str, Path | bytes]:
    """Repo path → local file (or bytes) of everything to commit: the folder minus ``exclude``, the new card."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    plan: dict[str, Path | bytes] = {
        path: folder / path for path in filter_repo_objects(files, ignore_patterns=list(exclude))
    }
    plan["README.md"] = readme
    return dict(sorted(plan.items()))


def write_tree(plan: dict[str, Path | bytes], out: Path) -> None:
    """Write the planned repo tree into ``out`` (hard links where possible: Parquet shards can be large)."""
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--dry-run {out} exists and is not empty; choose an empty or new folder")
    for path, source in plan.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
            continue
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def hub_state(api: HfApi, release: Release) -> HubState:
    """Read the repo's tags, the branch head (main's when the branch is new) and its files; empty when no repo."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(release.repo_id, repo_type=release.repo_type)
        heads = {branch.name: branch.target_commit for branch in refs.branches}
        head = heads.get(release.branch) or heads["main"]
        info = api.repo_info(release.repo_id, repo_type=release.repo_type, revision=head)
    except RepositoryNotFoundError:
        return HubState()
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"could not read {release.repo_type} {release.repo_id} on the Hub", err) from err
        raise
    return HubState(
        exists=True,
        tags=[tag.name for tag in refs.tags],
        head=head,
        branch_exists=release.branch in heads,
        files=[sibling.rfilename for sibling in info.siblings or []],
        private=info.private,
    )


def check_visibility(release: Release, state: HubState) -> None:
    """Refuse ``--private`` for a repo that exists and is public: it would not become private."""
    if release.private and state.exists and not state.private:
        raise UserError(
            f"{release.repo_id} exists and is public; --private does not change an existing repo's visibility "
            "(change it in the repo's settings first)"
        )


def commit_release(
    api: HfApi, release: Release, state: HubState, plan: dict[str, Path | bytes], description: str
) -> str:
    """Create the repo and branch if needed, commit ``plan`` as one commit, then tag it; returns the commit oid.

    The commit deletes whatever the branch holds beyond ``plan`` (stale shards would otherwise match the
    ``configs`` globs) and names the head it was planned against as parent, so a concurrent push fails it.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    operations = [CommitOperationAdd(path, source) for path, source in plan.items()]
    operations += [CommitOperationDelete(path) for path in stale_files(state, plan)]
    try:
        if not state.exists:
            api.create_repo(release.repo_id, repo_type=release.repo_type, private=release.private, exist_ok=True)
        if not state.branch_exists and release.branch != "main":
            api.create_branch(
                release.repo_id, branch=release.branch, revision=state.head, repo_type=release.repo_type, exist_ok=True
            )
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"could not create {release.repo_id} or its branch {release.branch!r}", err) from err
        raise
    parent = state.head if state.exists else branch_head(api, release)
    try:
        commit = api.create_commit(
            release.repo_id,
            operations,
            commit_message=f"Release {release.tag}",
            commit_description=description,
            repo_type=release.repo_type,
            revision=release.branch,
            parent_commit=parent,
        )
    except Exception as err:  # HTTP errors, LFS transfer errors (RuntimeError), dropped connections
        raise UserError(
            f"upload to {release.repo_id} failed ({type(err).__name__}: {err}); "
            f"{_after_failure(branch_head(api, release), parent, release.branch)} no tag was created or moved "
            f"({release.tag} does not exist). Re-run the same command to retry: files that already reached the Hub "
            "are not sent again."
        ) from err
    try:
        api.create_tag(
            release.repo_id, tag=release.tag, revision=commit.oid, repo_type=release.repo_type, tag_message=description
        )
    except Exception as err:
        if not is_hub_error(err):
            raise
        raise UserError(
            f"commit {commit.oid} landed on {release.branch!r} of {release.repo_id} but tagging it {release.tag} "
            f"failed ({hub_error('tagging', err)}). Re-run the same command to publish and tag the release."
        ) from err
    return commit.oid


def _after_failure(head: str | None, parent: str | None, branch: str) -> str:
    """What a failed commit left on the branch, judged from its head read again afterwards."""
    if head is None:
        return f"whether a commit reached {branch!r} could not be checked, and"
    if head == parent:
        return f"nothing was committed: {branch!r} is unchanged and"
    return f"the Hub did record a commit ({head[:12]}) on {branch!r}, but"


def branch_head(api: HfApi, release: Release) -> str | None:
    """The branch's current commit, or None when it (or the repo) cannot be read."""
    try:
        refs = api.list_repo_refs(release.repo_id, repo_type=release.repo_type)
    except Exception:  # the Hub unreachable or refusing: the caller says it could not check
        return None
    return next((b.target_commit for b in refs.branches if b.name == release.branch), None)


def stale_files(state: HubState, plan: dict[str, Path | bytes]) -> list[str]:
    """Files on the branch that the release does not contain (``.gitattributes`` stays)."""
    return sorted(set(state.files) - set(plan) - KEEP_ON_HUB)


def prepare(release: Release, dry_run: Path | None) -> tuple[HfApi, HubState, str | None, str | None]:
    """Check the token (real uploads only), read the repo, apply the version and visibility rules.

    Returns ``(api, state, previous, hub_unread)``; fails before anything is written when the release would be
    refused. A dry run that cannot read the repo (offline, unreachable, refused) plans a first release and returns
    why in ``hub_unread``.
    """
    from huggingface_hub import HfApi, get_token

    if dry_run is None and get_token() is None:
        raise UserError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (write access needed)")
    api = HfApi()
    try:
        state = hub_state(api, release)
    except UserError as err:
        if dry_run is None:
            raise
        return api, HubState(), None, str(err)
    previous = previous_version(state.tags, release)
    check_visibility(release, state)
    return api, state, previous, None


def deliver(
    api: HfApi, state: HubState, plan: dict[str, Path | bytes], outcome: Outcome, dry_run: Path | None
) -> Outcome:
    """Write the tree into ``dry_run`` when given, else commit and tag it; fills in what was done."""
    outcome.files, outcome.deleted = list(plan), stale_files(state, plan)
    if dry_run is not None:
        write_tree(plan, dry_run)
        outcome.dry_run = dry_run
        return outcome
    outcome.commit = commit_release(api, outcome.release, state, plan, outcome.description)
    return outcome


def validate_card(card, repo_type: str, hub_unread: str | None) -> None:
    """Check the card's metadata with the Hub's validator; skipped when a dry run found the Hub unreadable."""
    if hub_unread is not None:
        return
    try:
        card.validate(repo_type=repo_type)
    except Exception as err:
        if not is_hub_error(err) or getattr(getattr(err, "response", None), "status_code", None) == 400:
            raise
        raise hub_error("could not validate the card's metadata", err) from err


def _today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def local_roots(folder: Path) -> list[Path]:
    """The folders of this machine that nothing published may name: the folder's, its parent's and the home
    folder's absolute paths."""
    resolved = Path(folder).resolve()
    return [resolved, resolved.parent, Path.home()]


BUILD_RECORDS: tuple[str, ...] = ("build_report.json", "judge.json")
"""A built folder's records that a build before 2026-12 wrote with local paths (the source, the pool's adapters)."""


def check_dataset_paths(folder: Path, plan: dict[str, Path | bytes]) -> None:
    """Refuse to publish a built folder whose text files name a folder of this machine (one line naming the file);
    for a build's own records, written so by an older ``vlfeedback build``, the fix is to rebuild."""
    from vlfeedback_kit.cards.model import check_no_local_paths

    roots = local_roots(folder)
    try:
        check_no_local_paths({name: plan[name] for name in BUILD_RECORDS if name in plan}, roots)
    except UserError as err:
        raise UserError(
            f"{err}. An older `vlfeedback build` recorded local paths there: rebuild the folder (`vlfeedback build "
            f"--source SOURCE --out {folder} --overwrite`), which records names only"
        ) from err
    check_no_local_paths(plan, roots)


def publish_dataset(
    folder: Path,
    release: Release,
    dry_run: Path | None = None,
    include_rejects: bool = False,
    license: str | None = None,
    pretty_name: str | None = None,
) -> Outcome:
    """Publish a built folder as ``release``: changelog against the previous tag, card, one commit, tag.

    ``license`` and ``pretty_name`` are what the card states (``--license``, ``--pretty-name``; see
    ``render_dataset_card`` for the defaults). Like ``publish model``, it uploads no text file that names the
    folder's, its parent's or the home folder's absolute path (:func:`check_dataset_paths`)."""
    from fsspec.implementations.local import LocalFileSystem
    from huggingface_hub import HfFileSystem

    from vlfeedback_kit.cards.changelog import (
        changelog_section,
        compare,
        first_release_entry,
        format_entry,
        read_snapshot,
    )
    from vlfeedback_kit.cards.dataset import render_dataset_card

    folder = Path(folder)
    missing = [
        name for name in ("README.md", "build_report.json", "pairing_policies.json") if not (folder / name).is_file()
    ]
    if missing:
        raise UserError(f"{folder} is not a folder written by `vlfeedback build` (no {', '.join(missing)})")
    api, state, previous, hub_unread = prepare(release, dry_run)
    new = read_snapshot(LocalFileSystem(), folder.resolve().as_posix(), "this build")
    if previous is None:
        entry = first_release_entry(release.tag, _today(), new)
        section = entry
    else:
        try:
            old = read_snapshot(
                HfFileSystem(skip_instance_cache=True), f"datasets/{release.repo_id}@{previous}", previous
            )
        except Exception as err:
            if not is_hub_error(err):
                raise
            raise hub_error(f"could not read the previous release {release.repo_id}@{previous}", err) from err
        entry = format_entry(release.tag, _today(), compare(old, new))
        section = changelog_section(entry, old.card)
    card = render_dataset_card(
        folder,
        repo_id=release.repo_id,
        revision=release.tag,
        changelog=section,
        license=license,
        pretty_name=pretty_name,
    )
    validate_card(card, "dataset", hub_unread)
    exclude = tuple(p for p in DATASET_EXCLUDE if not (include_rejects and p == "rejects.jsonl"))
    plan = upload_plan(folder, exclude, str(card).encode("utf-8"))
    check_dataset_paths(folder, plan)
    usage = [f'load_dataset("{release.repo_id}", "{config}", revision="{release.tag}")' for config in new.splits]
    outcome = Outcome(release, previous, entry, usage, hub_unread=hub_unread)
    return deliver(api, state, plan, outcome, dry_run)


def publish_model(
    run_dir: Path,
    release: Release,
    dry_run: Path | None = None,
    eval_results: Path | None = None,
    license: str | None = None,
) -> Outcome:
    """Publish a run dir as ``release``: card pointing at the repo and tag, one commit, tag.

    What is uploaded names no folder of this machine: the run's records are uploaded rewritten (a local base model
    or dataset by its folder name, ``cards.model.public_files``), and any other text file that still holds the
    run dir's, its parent's or the home folder's path is refused, naming the file."""
    from vlfeedback_kit.cards.model import check_no_local_paths, public_files, read_run_info, render_model_card

    run_dir = Path(run_dir)
    run = read_run_info(run_dir)
    api, state, previous, hub_unread = prepare(release, dry_run)
    card = render_model_card(
        run_dir, repo_id=release.repo_id, revision=release.tag, eval_results=eval_results, license=license
    )
    validate_card(card, "model", hub_unread)
    plan = upload_plan(run_dir, MODEL_EXCLUDE, str(card).encode("utf-8"))
    plan |= {path: data for path, data in public_files(run_dir, run).items() if path in plan}
    check_no_local_paths(plan, local_roots(run_dir))
    description = f"Model release {release.tag}" + (f" (previous: {previous})" if previous else " (first release)")
    load = (
        f'PeftModel.from_pretrained(base_model, "{release.repo_id}", revision="{release.tag}")'
        if (run_dir / "adapter_config.json").is_file()
        else f'AutoModelForImageTextToText.from_pretrained("{release.repo_id}", revision="{release.tag}")'
    )
    outcome = Outcome(release, previous, description, [load], hub_unread=hub_unread)
    return deliver(api, state, plan, outcome, dry_run)
