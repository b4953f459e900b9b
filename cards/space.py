"""``vlfeedback publish space``: the Silkie-vs-base Space as one commit to a Space repo, runnable from its tree alone.

The kit is not on PyPI, so the tree carries the kit's wheel (``wheels/``) and names it in ``requirements.txt``;
``app.py`` is the checkout's ``spaces/silkie-vs-base/app.py``; the README's YAML header is filled from the arguments
(base, Silkie and votes repos, hardware). The Space is configured by variables, which are set as well.

    vlfeedback publish space --repo ORG/silkie-arena --model Qwen/Qwen2-VL-2B-Instruct --adapter ORG/silkie \
        --votes-repo ORG/silkie-arena-votes --hardware zero-a10g [--dry-run OUT]
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlfeedback_kit.errors import UserError

SPACE_FOLDER = Path(__file__).resolve().parents[1] / "spaces" / "silkie-vs-base"
"""The Space's source folder in a checkout of the kit."""

CHECKOUT = SPACE_FOLDER.parents[1]


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

    def variables(self) -> dict[str, str]:
        """The Space variables the app reads (``ArenaConfig.from_env``)."""
        values = {"ARENA_MODEL": self.model, "ARENA_MODEL_REVISION": self.model_revision,
                  "ARENA_ADAPTER": self.adapter, "ARENA_ADAPTER_REVISION": self.adapter_revision,
                  "ARENA_VOTES_REPO": self.votes_repo}  # fmt: skip
        return {key: value for key, value in values.items() if value}


def readme(release: SpaceRelease, template: str) -> str:
    """The Space README: the template's body under a header naming this release's models, datasets and hardware."""
    _, header, body = template.split("---\n", 2)
    meta = yaml.safe_load(header)
    meta["models"] = [release.model, release.adapter]
    meta["datasets"] = [d for d in (meta.get("datasets") or [])[:1] + [release.votes_repo] if d]
    if release.hardware:
        meta["suggested_hardware"] = release.hardware
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
    (out / "requirements.txt").write_text(
        "# gradio comes from the README's sdk_version; the kit (not on PyPI) is the wheel in this tree\n"
        f"./wheels/{wheel.name}[train]\nspaces\n", encoding="utf-8")  # fmt: skip
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def space_url(endpoint: str, repo_id: str) -> str:
    return f"{endpoint.rstrip('/')}/spaces/{repo_id}"


def publish_space(release: SpaceRelease, dry_run: Path | None = None) -> tuple[str, list[str]]:
    """Create or update the Space repo in one commit and set its variables (or, with ``dry_run``, only write the
    tree there); returns the Space URL and the files. The token comes from the environment (``HF_TOKEN``)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if dry_run is not None:
        return space_url(constants.ENDPOINT, release.repo_id), space_tree(release, dry_run)
    api = HfApi()
    with tempfile.TemporaryDirectory() as scratch:
        files = space_tree(release, Path(scratch))
        variables = [{"key": key, "value": value} for key, value in release.variables().items()]
        if api.repo_exists(release.repo_id, repo_type="space"):
            for item in variables:
                api.add_space_variable(release.repo_id, item["key"], item["value"])
            if release.hardware:
                api.request_space_hardware(release.repo_id, release.hardware)
        else:  # a new Space also gets a voter-id secret, so anonymous ids survive restarts
            voter_secret = {"key": "ARENA_VOTER_SECRET", "value": secrets.token_urlsafe(32)}
            api.create_repo(release.repo_id, repo_type="space", space_sdk="gradio", private=release.private,
                            space_hardware=release.hardware, space_variables=variables,
                            space_secrets=[voter_secret])  # fmt: skip
        operations = [CommitOperationAdd(name, str(Path(scratch) / name)) for name in files]
        api.create_commit(release.repo_id, repo_type="space", operations=operations,
                          commit_message="Publish the Silkie-vs-base arena")  # fmt: skip
    return space_url(constants.ENDPOINT, release.repo_id), files
