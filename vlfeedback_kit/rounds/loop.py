"""The order of a round's stages and the resume contract.

Layout of ``OUT``::

    OUT/config.json                     the config the run was started with (a changed one is refused)
    OUT/round-k/answers/                generation: release layout (+ generate/state.sqlite, per prompt)
    OUT/round-k/judged/                 annotate: release layout with ratings (+ annotate/state.sqlite, per call)
    OUT/round-k/dataset/                build: raw, pairs and round-pairs configs
    OUT/round-k/run/                    train: the round's adapter run dir (checkpoints while it runs)
    OUT/round-k/eval/vs-base/ …         win-rate judgements, scores and judge cache
    OUT/round-k/<stage>.done.json       written atomically when a stage finishes: a re-run skips the stage
    OUT/eval/answers-<policy>.json      each policy's greedy answers to the held-out prompts
    OUT/dataset/                        every round's configs in one Hub-ready folder
    OUT/report.md, report.json, rounds.png

A stage without its done file is re-entered and resumes from its own ledger: generation per prompt, judging per
call (annotate's store), training from the last checkpoint, the win rates from the judge cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import write_json
from vlfeedback_kit.rounds import data, evaluate, generate, inputs, judge, publish, report, train
from vlfeedback_kit.rounds.config import RoundsConfig

STAGES = ("generate", "judge", "build", "train", "evaluate")
CONFIG_RECORD = "config.json"
RESUMABLE_KEYS = ("rounds", "engine_base_url", "judge.base_url", "judge.concurrency")
"""Config keys a re-run may change: ``--rounds N`` extends a finished run, and where the judge and the policy are
served (a moved deployment, a replica added) changes nothing a round computes; any other change is refused."""


def comparable(config: dict) -> dict:
    """The config as ``section.key`` entries, less what a re-run may change."""
    flat = {f"{k}.{key}": v for k, section in config.items() if isinstance(section, dict)
            for key, v in section.items()}  # fmt: skip
    flat |= {k: v for k, v in config.items() if not isinstance(v, dict)}
    return {k: v for k, v in flat.items() if k not in RESUMABLE_KEYS}


def public_name(value: str | None) -> str | None:
    """A model or adapter as a published file may name it: a local folder by its name, a Hub id as is."""
    if value is None:
        return None
    return Path(value).name if Path(value).exists() else value


def round_dir(out: Path, k: int) -> Path:
    return out / f"round-{k}"


def policy_of(config: RoundsConfig, out: Path, k: int) -> dict:
    """The policy that generates round ``k``: the base with round k−1's adapter (round 1: ``start_adapter``)."""
    if k > 1:
        adapter, revision, name = str(round_dir(out, k - 1) / "run"), None, f"round-{k - 1}"
    else:
        adapter, revision, name = (
            config.start_adapter,
            config.start_adapter_revision,
            public_name(config.start_adapter),
        )
    return {"model": config.base_model, "adapter": adapter, "adapter_revision": revision,
            "model_name": public_name(config.base_model), "adapter_name": name}  # fmt: skip


def label_of(config: RoundsConfig, k: int) -> str:
    """The eval label of the policy after round ``k`` (round 0: the start adapter, else the base)."""
    if k == 0:
        return "start" if config.start_adapter else evaluate.BASE_LABEL
    return f"round-{k}"


def check_record(config: RoundsConfig, out: Path) -> None:
    """Refuse to continue ``out`` with another config (besides :data:`RESUMABLE_KEYS`): its rounds would mix two
    setups."""
    path = out / CONFIG_RECORD
    current = comparable(config.to_dict())
    if path.is_file():
        recorded = comparable(json.loads(path.read_text(encoding="utf-8")))
        changed = sorted(k for k in current.keys() | recorded.keys() if current.get(k) != recorded.get(k))
        if changed:
            raise UserError(
                f"--out {out} was started with another config ({', '.join(changed)} changed); re-run with the same "
                "config (only `rounds`/--rounds may grow, and the judge and policy endpoints move), or choose a "
                "new --out"
            )
    write_json(path, config.to_dict())


class Stage:
    """A round's stage: skipped when its done file exists, else run and marked done with its result."""

    def __init__(self, out: Path, k: int, hook: Callable[[int, str], None] | None) -> None:
        self.folder, self.k, self.hook = round_dir(out, k), k, hook

    def run(self, name: str, work: Callable[[], dict]) -> dict:
        marker = self.folder / f"{name}.done.json"
        if marker.is_file():
            return json.loads(marker.read_text(encoding="utf-8"))
        if self.hook is not None:
            self.hook(self.k, name)
        result = work()
        write_json(marker, result)
        return result


def run_round(config: RoundsConfig, out: Path, k: int, progress: bool = True,
              hook: Callable[[int, str], None] | None = None) -> dict:  # fmt: skip
    """Run (or finish) round ``k``: generate, judge, build, train, evaluate; returns its record."""
    folder, stage, policy = round_dir(out, k), Stage(out, k, hook), policy_of(config, out, k)
    if config.engine == "openai":
        served = policy["adapter_name"] if policy["adapter"] else config.base_model
        gen = stage.run("generate", lambda: generate.generate_openai(config, k, served, folder / "answers", progress))
    else:
        gen = stage.run("generate", lambda: generate.generate_local(config, k, policy, folder / "answers", progress))
    judged = stage.run("judge", lambda: judge.judge_round(config, k, folder / "answers", folder / "judged", progress))
    built = stage.run("build", lambda: data.build_round(config, folder / "judged", folder / "dataset", progress))
    if not built["pairs"]:
        raise judge.RoundStopped(f"round {k}: the pairing policy kept no pair of {built['rows']} judged rows (see "
                                 f"{folder / 'dataset' / 'pairing_policies.json'}); loosen `pairing` (min_margin, "
                                 "max_length_ratio) or draw more samples, and re-run")  # fmt: skip
    trained = stage.run("train", lambda: train.train_round(config, k, folder / "dataset", folder / "run", policy))
    scores = stage.run("evaluate", lambda: evaluate_round(config, out, k, progress))
    public_policy = {key: policy[key] for key in ("model_name", "adapter_name", "adapter_revision")}
    record = {"round": k, "policy": public_policy, "generated": gen, "judged": judged, **built, "train": trained,
              "eval": scores}  # fmt: skip
    write_json(folder / "run" / publish.LINEAGE, publish.lineage(record, config))
    return record


def evaluate_round(config: RoundsConfig, out: Path, k: int, progress: bool = True) -> dict:
    """Round k vs the base and vs the policy it started from, on the held-out prompts."""
    items = evaluate.heldout_items(config)
    answers_dir = out / "eval"
    labels = {evaluate.BASE_LABEL: None, label_of(config, k - 1): policy_of(config, out, k)["adapter"],
              label_of(config, k): str(round_dir(out, k) / "run")}  # fmt: skip
    answers = {label: evaluate.answers_of(config, items, label, adapter, answers_dir)
               for label, adapter in labels.items()}  # fmt: skip
    folder = round_dir(out, k) / "eval"
    result = {"mean_words": {label: evaluate.mean_words(a) for label, a in answers.items()}}
    result["vs_base"] = evaluate.compare(config, items, answers, label_of(config, k), evaluate.BASE_LABEL,
                                         folder / "vs-base", progress)  # fmt: skip
    if config.eval.benchmarks:
        result["benchmarks"] = evaluate.benchmark_scores(config, label_of(config, k), labels[label_of(config, k)],
                                                         folder / "benchmarks", progress)  # fmt: skip
    previous = label_of(config, k - 1)
    result["vs_previous"] = (result["vs_base"] if previous == evaluate.BASE_LABEL else evaluate.compare(
        config, items, answers, label_of(config, k), previous, folder / "vs-previous", progress))  # fmt: skip
    return result


def base_benchmarks(config: RoundsConfig, out: Path, progress: bool = True) -> dict:
    """The listed benchmarks of the base model, run once (``eval/benchmarks-base.json``)."""
    path = out / "eval" / "benchmarks-base.json"
    if not config.eval.benchmarks:
        return {}
    if not path.is_file():
        scores = evaluate.benchmark_scores(config, evaluate.BASE_LABEL, None, out / "eval" / "benchmarks", progress)
        write_json(path, scores)
    return json.loads(path.read_text(encoding="utf-8"))


def run_rounds(config: RoundsConfig, out: Path, progress: bool = True,
               hook: Callable[[int, str], None] | None = None) -> dict:  # fmt: skip
    """Run every round of ``config`` into ``out`` (resuming what is there), then write the dataset version and
    the report; ``hook(round, stage)`` is called before each stage that runs (tests stop a run there)."""
    resolved = inputs.resolve(config, out)
    evaluate.check_held_out(resolved)
    out.mkdir(parents=True, exist_ok=True)
    check_record(config, out)
    config = resolved
    base_scores = base_benchmarks(config, out, progress)
    records = []
    for k in range(1, config.rounds + 1):
        records.append(run_round(config, out, k, progress, hook))
        data.write_version(out, records, config)
        report.write_report(out, records, config, base_scores)
    return report.summary(records, config)
