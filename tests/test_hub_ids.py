"""The kit's one Hub-id check (vlfeedback_kit.hub_ids): which names are ``ORG/NAME[@REV]`` and which are folders.

Run: pytest tests/test_hub_ids.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlfeedback_kit.builders.pipeline.instructions import resolve_location
from vlfeedback_kit.builders.sources import open_source
from vlfeedback_kit.cards.model import is_local
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.runner import resolve_data
from vlfeedback_kit.hub_ids import folder_or_hub_problem, is_hub_id, split_revision

ACCEPTED = ["org/name", "lmms-lab/MME", "Org_1/name.v2-x", "_org/name", "a/b"]
REFUSED = [
    "name",  # a bare word is a folder name
    "runs/a/b",  # a relative path with more parts
    "./org/name",
    "/org/name",
    "~/name",
    "../name",
    ".org/name",
    "-org/name",
    "org/name-",
    "org/na..me",
    "org/na--me",
    "org/name.git",
    "org/na me",
    "org/café",  # the Hub's names are ASCII
    "org/" + "n" * 97,
    "org/",
    "/",
    "",
    "org\\name",
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_an_org_name_id_is_accepted_with_or_without_a_revision_allowed(name: str) -> None:
    assert is_hub_id(name) and is_hub_id(name, revision=True)


@pytest.mark.parametrize("name", REFUSED)
def test_a_name_that_is_not_org_name_is_refused(name: str) -> None:
    assert not is_hub_id(name) and not is_hub_id(name, revision=True)


@pytest.mark.parametrize("name", [None, 3, Path("org/name"), ["org/name"]])
def test_a_value_that_is_not_a_string_is_no_hub_id(name: object) -> None:
    assert not is_hub_id(name) and not is_hub_id(name, revision=True)


@pytest.mark.parametrize("spec", ["org/name@main", "org/name@v1.0", "org/name@refs/pr/3", "org/name@0123abcd"])
def test_a_revision_is_accepted_only_where_one_may_follow(spec: str) -> None:
    assert is_hub_id(spec, revision=True) and not is_hub_id(spec)


@pytest.mark.parametrize("spec", ["org/name@", "org/name@a b", "org/name@x@y", "org/a/b@main", "name@main", "org/n@é"])
def test_a_bad_revision_or_id_before_it_is_refused(spec: str) -> None:
    assert not is_hub_id(spec, revision=True)


def test_split_revision() -> None:
    assert split_revision("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    assert split_revision("org/name") == ("org/name", None)


def test_a_folder_here_or_a_hub_id_names_something_and_a_typo_does_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "file").write_text("")
    assert folder_or_hub_problem("runs/tiny", "--model") is None  # a folder, though not ORG/NAME-shaped
    assert folder_or_hub_problem("org/name", "--model") is None  # no such folder: a Hub id
    assert folder_or_hub_problem("org/file", "--model") == (
        "--model org/file: no folder org/file here, and org/file is not a Hub id (ORG/NAME)"
    )  # a file here is neither
    assert folder_or_hub_problem("runs/tyni", "--model") is None  # ORG/NAME-shaped: the Hub is asked, after
    assert "is not a Hub id" in folder_or_hub_problem("runs/tiny/checkpoint-9", "--model")


@pytest.mark.parametrize("spec", ["org/na..me", "org/name.git", "org/café", "org/a/b"])
def test_every_place_taking_a_hub_id_refuses_what_the_hub_refuses_without_asking_it(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def asked(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the Hub was asked for {spec}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", asked)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", asked)
    with pytest.raises(UserError, match=r"not a Hub dataset id ORG/NAME\[@REV\]"):
        resolve_data("mme", f"{spec}@v1")
    with pytest.raises(UserError, match=r"not a Hub dataset id ORG/NAME\[@REV\]"):
        resolve_location(f"{spec}@v1", "src")
    with pytest.raises(UserError, match="source path does not exist"):
        open_source(spec)
    assert folder_or_hub_problem(spec, "--model") and is_local(spec, None)
