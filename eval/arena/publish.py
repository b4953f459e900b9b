"""``vlfeedback publish space``: the Silkie-vs-base Space as one commit to a Space repo, runnable from its tree alone.

The kit is not on PyPI, so the tree carries the kit's wheel (``wheels/``) and names it in ``requirements.txt``;
``app.py`` is the checkout's ``spaces/silkie-vs-base/app.py``; the README's YAML header is filled from the arguments
(base, Silkie and votes repos, hardware). The Space is configured by variables, which are set as well.

Votes hold each visitor's prompt and image: the votes repo is created **private** (unless ``public_votes``), a
public one is refused, and the Space keeps votes only if it has a write token (the Space secret ``HF_TOKEN``); the
publisher is told which holds and how to add the token, and nothing claims votes are kept when it is missing.

    vlfeedback publish space --repo ORG/silkie-arena --model Qwen/Qwen2-VL-2B-Instruct --adapter ORG/silkie \
        --votes-repo ORG/silkie-arena-votes --hardware zero-a10g [--dry-run OUT]
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlfeedback_kit.errors import UserError

SPACE_FOLDER = Path(__file__).resolve().parents[2] / "spaces" / "silkie-vs-base"
"""The Space's source folder in a checkout of the kit."""

CHECKOUT = SPACE_FOLDER.parents[1]

VOTES_MARKER = "<!-- votes: filled in by vlfeedback publish space -->"
"""The line of the Space README's template that becomes :meth:`SpaceRelease.votes_paragraph`."""


@dataclass(frozen=True)
class SpaceRelease:
    """What one ``publish space`` puts on the Hub."""

    repo_id: str
    model: str
    adapter: str
    votes_repo: str | None = None
    hardware: str | None = None
    model_revision: str | None = None
    adapter_revision: str | None = None
    private: bool | None = None
    public_votes: bool = False
    """Create the votes repo public (the Space then says so to every visitor); by default it is private."""
    votes_token: str | None = field(default=None, repr=False)
    """A write token for the votes repo, set as the Space secret ``HF_TOKEN`` (best: fine-grained, that repo only)."""

    def variables(self) -> dict[str, str]:
        """The Space variables the app reads (``ArenaConfig.from_env``)."""
        values = {"ARENA_MODEL": self.model, "ARENA_MODEL_REVISION": self.model_revision,
                  "ARENA_ADAPTER": self.adapter, "ARENA_ADAPTER_REVISION": self.adapter_revision,
                  "ARENA_VOTES_REPO": self.votes_repo,
                  "ARENA_PUBLIC_VOTES": "1" if self.votes_repo and self.public_votes else None}  # fmt: skip
        return {key: value for key, value in values.items() if value}

    def votes_paragraph(self) -> str:
        """The Space README's statement of what a vote stores and where (a claim only as strong as the setup)."""
        stored = ("A vote stores the visitor's question, uploaded image, both answers and the vote, with a random "
                  "voter id kept in the browser (no account, no IP address, no token).")  # fmt: skip
        if not self.votes_repo:
            return f"{stored} No votes dataset is configured: votes stay on the Space's disk and are lost at restart."
        visibility = "**public** (anyone can read them)" if self.public_votes else "**private**"
        return (f"{stored} They are pushed to the {visibility} dataset `{self.votes_repo}` **only if this Space has a "
                "write token** (the secret `HF_TOKEN`); without one they stay on the Space's disk and are lost at "
                "every restart. The page tells every visitor which applies, before the first vote.")  # fmt: skip

    def votes_note(self, endpoint: str, token_set: bool | None) -> str:
        """What ``publish space`` tells the publisher about the votes: kept where, or not kept and how to fix it
        (``token_set`` None: not known, as in a dry run or when the Space's secrets cannot be read)."""
        if not self.votes_repo:
            return ("votes: no --votes-repo, so the Space keeps votes only on its disk and loses them at every "
                    "restart")  # fmt: skip
        visibility = "public" if self.public_votes else "private"
        if token_set:
            return f"votes: pushed to the {visibility} dataset {self.votes_repo} with the Space's HF_TOKEN secret"
        how = (f"create a fine-grained token with write access to {self.votes_repo} only "
               f"({endpoint.rstrip('/')}/settings/tokens) and add it as the secret HF_TOKEN in "
               f"{space_url(endpoint, self.repo_id)}/settings")  # fmt: skip
        if token_set is None:
            return (
                f"votes: kept in the {visibility} dataset {self.votes_repo} only if the Space has the secret "
                f"HF_TOKEN; without it they stay on its disk and are lost at every restart. To keep them, {how}"
            )
        return (f"votes: NOT kept yet: the Space has no HF_TOKEN secret, so votes stay on its disk and are lost at "
                f"every restart. To keep them in the {visibility} dataset {self.votes_repo}, {how}")  # fmt: skip


def readme(release: SpaceRelease, template: str) -> str:
    """The Space README: the template's body under a header naming this release's models, datasets and hardware."""
    _, header, body = template.split("---\n", 2)
    meta = yaml.safe_load(header)
    meta["models"] = [release.model, release.adapter]
    meta["datasets"] = [d for d in (meta.get("datasets") or [])[:1] + [release.votes_repo] if d]
    if release.hardware:
        meta["suggested_hardware"] = release.hardware
    if VOTES_MARKER not in body:
        raise UserError(f"{SPACE_FOLDER / 'README.md'} lacks the line {VOTES_MARKER}, where the votes policy goes")
    body = body.replace(VOTES_MARKER, release.votes_paragraph())
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def build_wheel(out: Path) -> Path:
    """The kit's wheel, built from the checkout without network (setuptools from the dev extra)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(CHECKOUT)], capture_output=True, text=True)  # fmt: skip
    wheels = sorted(out.glob("vlfeedback_kit-*.whl"))
    if done.returncode != 0 or not wheels:
        raise UserError(f"could not build the kit's wheel: {done.stderr.strip()[-400:]}")
    return wheels[-1]


def space_tree(release: SpaceRelease, out: Path) -> list[str]:
    """Write the Space's files to ``out`` (app.py, README.md, requirements.txt, the wheel); returns their paths."""
    if not (SPACE_FOLDER / "app.py").is_file():
        raise UserError(f"publish space runs from a checkout of the kit: {SPACE_FOLDER / 'app.py'} is missing")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SPACE_FOLDER / "app.py", out / "app.py")
    (out / "README.md").write_text(readme(release, (SPACE_FOLDER / "README.md").read_text(encoding="utf-8")),
                                   encoding="utf-8")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(Path(scratch))
        (out / "wheels").mkdir(exist_ok=True)
        shutil.copyfile(wheel, out / "wheels" / wheel.name)
    (out / "requirements.txt").write_text(space_requirements(wheel.name), encoding="utf-8")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


SERVING_LIBRARIES: tuple[str, ...] = ("torch", "torchvision", "transformers", "peft", "accelerate")
"""What :mod:`vlfeedback_kit.serving` runs on: the ``[train]`` extra without TRL (the Space serves, never trains)."""


def space_requirements(wheel: str) -> str:
    """The Space's ``requirements.txt``: the kit's wheel (no extra) and the serving libraries at this release's
    ``[train]`` pins (read from the installed metadata, so they cannot drift from pyproject.toml); no TRL."""
    from vlfeedback_kit.extras import pinned_ranges

    ranges = pinned_ranges("train")
    libraries = "".join(f"{name}{ranges.get(name, '')}\n" for name in SERVING_LIBRARIES)
    return ("# gradio comes from the README's sdk_version; the kit (not on PyPI) is the wheel in this tree; the\n"
            "# serving libraries at the kit's pins, without TRL (the Space serves with vlfeedback_kit.serving)\n"
            f"./wheels/{wheel}\n{libraries}spaces\n")  # fmt: skip


def space_url(endpoint: str, repo_id: str) -> str:
    return f"{endpoint.rstrip('/')}/spaces/{repo_id}"


def publish_space(release: SpaceRelease, dry_run: Path | None = None) -> tuple[str, list[str]]:
    """Create or update the Space repo in one commit and set its variables (or, with ``dry_run``, only write the
    tree there); returns the Space URL and the files. The token comes from the environment (``HF_TOKEN``)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if dry_run is not None:
        files = space_tree(release, dry_run)
        print(release.votes_note(constants.ENDPOINT, None))
        return space_url(constants.ENDPOINT, release.repo_id), files
    api = HfApi()
    if release.votes_repo:
        votes_repo(api, release)
    with tempfile.TemporaryDirectory() as scratch:
        files = space_tree(release, Path(scratch))
        variables = [{"key": key, "value": value} for key, value in release.variables().items()]
        token = [{"key": "HF_TOKEN", "value": release.votes_token}] if release.votes_token else []
        if api.repo_exists(release.repo_id, repo_type="space"):
            for item in variables:
                api.add_space_variable(release.repo_id, item["key"], item["value"])
            for item in token:
                api.add_space_secret(release.repo_id, item["key"], item["value"])
            if release.hardware:
                api.request_space_hardware(release.repo_id, release.hardware)
            token_set = bool(token) or _has_secret(api, release.repo_id, "HF_TOKEN")
        else:  # a new Space also gets a voter-id secret, so anonymous ids survive restarts
            voter_secret = {"key": "ARENA_VOTER_SECRET", "value": secrets.token_urlsafe(32)}
            api.create_repo(release.repo_id, repo_type="space", space_sdk="gradio", private=release.private,
                            space_hardware=release.hardware, space_variables=variables,
                            space_secrets=[voter_secret, *token])  # fmt: skip
            token_set = bool(token)
        operations = [CommitOperationAdd(name, str(Path(scratch) / name)) for name in files]
        api.create_commit(release.repo_id, repo_type="space", operations=operations,
                          commit_message="Publish the Silkie-vs-base arena")  # fmt: skip
    print(release.votes_note(constants.ENDPOINT, token_set))
    return space_url(constants.ENDPOINT, release.repo_id), files


def votes_repo(api: Any, release: SpaceRelease) -> None:
    """Create the votes dataset (private unless ``public_votes``), or refuse one that is public without it: votes
    hold each visitor's prompt and image."""
    api.create_repo(release.votes_repo, repo_type="dataset", private=not release.public_votes, exist_ok=True)
    if not api.repo_info(release.votes_repo, repo_type="dataset").private and not release.public_votes:
        raise UserError(f"--votes-repo {release.votes_repo} is public, and votes hold each visitor's prompt and "
                        "uploaded image: make it private on the Hub, or pass --public-votes (the page then tells "
                        "visitors their votes are public)")  # fmt: skip


def _has_secret(api: Any, repo_id: str, key: str) -> bool | None:
    """Whether the Space has the secret ``key`` (None when its secrets cannot be listed)."""
    try:
        return key in api.get_space_secrets(repo_id)
    except Exception:  # noqa: BLE001 - an older Hub or a token without that right: not known
        return None
