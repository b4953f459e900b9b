"""Lineage on the Hub: the rounds' dataset folder as one tagged release carrying every round's configs, and each
round's adapter as a tagged release of one model repo (round k is ``v0.k.0``) whose card names its parent round,
its data config and its held-out win rates (``lineage.json`` in the run dir, rendered by ``cards.model``).

Publishing goes through ``cards.publish`` (one commit and one tag per release, the same token, visibility and
no-local-path checks as ``vlfeedback publish``); a release whose tag exists is skipped, so a re-run after an
interruption publishes only what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlfeedback_kit.cards.model import LINEAGE
from vlfeedback_kit.files import write_json
from vlfeedback_kit.rounds.config import RoundsConfig


def version(k: int) -> str:
    """The release version of round ``k`` (of the model) or of a dataset holding ``k`` rounds."""
    return f"0.{k}.0"


def lineage(record: dict, config: RoundsConfig, dataset_repo: str | None = None, model_repo: str | None = None,
            rounds_in_dataset: int | None = None) -> dict:  # fmt: skip
    """A round's lineage: the policy that generated its pairs and that it started from, its data config, its eval;
    with repos given, as the Hub names them (parent release tag, dataset release tag)."""
    k, policy = record["round"], record["policy"]
    if k > 1 and model_repo:
        parent = f"round {k - 1} (`{model_repo}` revision `v{version(k - 1)}`)"
    elif k > 1:
        parent = f"round {k - 1} (`round-{k - 1}/run`)"
    else:
        adapter = f" with adapter `{policy['adapter_name']}`" if policy["adapter_name"] else ""
        parent = f"the base model `{policy['model_name']}`{adapter}"
    rows = [(f"vs {record['eval'][key]['other']}", record["eval"][key]) for key in ("vs_base", "vs_previous")]
    return {
        "round": k, "parent": parent, "judge": config.judge.model,
        "data": {"repo": dataset_repo, "config": f"round-{k}-pairs",
                 "revision": f"v{version(rounds_in_dataset)}" if dataset_repo and rounds_in_dataset else None},
        "eval": [{"name": name, "win_rate": f"{r['win_rate']:.3f}",
                  "ci": "[{:.3f}, {:.3f}]".format(*r["win_rate_ci"])} for name, r in dict(rows).items()],
    }  # fmt: skip


def published(repo: str, repo_type: str) -> set[str]:
    """The tags a Hub repo has (none when it does not exist yet)."""
    from huggingface_hub import HfApi

    from vlfeedback_kit.cards.publish import Release, hub_state

    return set(hub_state(HfApi(), Release(repo, "0.0.0", repo_type=repo_type)).tags)


def publish_dataset_version(out: Path, repo: str, dry_run: Path | None = None):
    """Publish ``OUT/dataset`` (every round's configs) as ``v0.N.0``, N the rounds it holds; None when that tag
    exists already."""
    from vlfeedback_kit.cards.publish import Outcome, Release, check_dataset_paths, deliver, prepare, upload_plan

    folder = out / "dataset"
    rounds = json.loads((folder / "rounds.json").read_text(encoding="utf-8"))["rounds"]
    release = Release(repo, version(len(rounds)))
    if dry_run is None and release.tag in published(repo, "dataset"):
        return None
    api, state, previous, _ = prepare(release, dry_run)
    plan = upload_plan(folder, (), (folder / "README.md").read_bytes())
    check_dataset_paths(folder, plan)
    usage = [f'load_dataset("{repo}", "round-{r["round"]}-pairs", revision="{release.tag}")' for r in rounds]
    description = f"On-policy rounds 1-{len(rounds)}: configs round-k (judged answers) and round-k-pairs"
    return deliver(api, state, plan, Outcome(release, previous, description, usage), dry_run)


def publish_round_models(out: Path, config: RoundsConfig, records: list[dict], repo: str,
                         dataset_repo: str | None = None, dry_run: Path | None = None) -> list:  # fmt: skip
    """Publish each round's adapter as ``v0.k.0`` of ``repo`` (rounds already tagged are skipped), each card with
    its lineage."""
    from vlfeedback_kit.cards.publish import Release, publish_model

    tags = set() if dry_run is not None else published(repo, "model")
    outcomes = []
    for record in records:
        release = Release(repo, version(record["round"]), repo_type="model")
        if release.tag in tags:
            continue
        run_dir = out / f"round-{record['round']}" / "run"
        write_json(run_dir / LINEAGE, lineage(record, config, dataset_repo, repo, len(records)))
        target = dry_run / f"round-{record['round']}" if dry_run is not None else None
        outcomes.append(publish_model(run_dir, release, dry_run=target))
    return outcomes
