"""The rounds config (``rounds.yaml``): base model, prompts, samples, decoding, judge, pairing, recipe and eval.

    base_model: runs/tiny-qwen2-vl
    start_adapter: null               # optional policy of round 0, e.g. the offline Silkie (run dir or Hub id)
    prompts: instructions/            # release layout (`vlfeedback instructions` output) or a built folder (train)
    heldout: heldout/                 # release layout, or a built folder (its raw test split)
    rounds: 3
    samples: 4
    generation: {max_new_tokens: 256, temperature: 0.7, top_p: 1.0, seed: 0}
    judge: {base_url: https://api.openai.com/v1, model: gpt-4o}
    pairing: {min_margin: 1.0, max_length_ratio: 1.5, max_pairs_per_prompt: 2}
    train: {recipe: silkie-qwen2-vl-7b, reference: base, overrides: {max_steps: 200}}
    eval: {pick_by: winrate_vs_base}

Unknown keys and bad values are one-line :class:`~vlfeedback_kit.errors.UserError` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vlfeedback_kit.errors import UserError

ENGINES = ("transformers", "openai")
REFERENCES = ("base", "init")
PICK_BY = ("winrate_vs_base", "winrate_vs_previous")
"""What chooses the best round: its judged win rate vs the base, or vs the previous round (or a benchmark's number,
``BENCHMARK:KEY``)."""
PICK_ORDERS = ("max", "min")
"""Whether the best round has the highest ``pick_by`` number or the lowest."""


@dataclass(frozen=True)
class Generation:
    """Decoding settings, the same for every sample of every round (deconfounded candidates)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Judge:
    """The judge: any OpenAI-compatible endpoint, with ``annotate``'s limits; it also gives the win-rate verdicts."""

    base_url: str | list[str] = "https://api.openai.com/v1"
    """One URL, or the replicas of one deployment (a YAML list, or comma-separated): requests spread over them, each
    with its own breaker, as ``annotate --base-url A,B``."""
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    max_fail_rate: float = 0.05
    max_cost: float | None = None
    response_format: str = "text"
    prices: str | None = None


@dataclass(frozen=True)
class Pairing:
    """The round's pairing policy (``builders.pairing.PairingPolicy`` fields): a margin and length balance by
    default, since DPO rounds amplify verbosity (RLAIF-V: score gap, 2 pairs per prompt, length-balanced)."""

    strategy: str = "all-pairs"
    aggregation: str = "mean"
    min_margin: float = 1.0
    max_pairs_per_prompt: int | None = 2
    max_length_ratio: float | None = 1.5
    seed: int = 42


@dataclass(frozen=True)
class Train:
    """The training recipe of every round: ``vlfeedback train --recipe`` with ``overrides`` as TRL flags."""

    recipe: str = "tiny"
    accelerate: str | None = None
    reference: str = "base"
    """The DPO reference: ``base`` or ``init`` (the round's starting policy); it keys the reference cache."""
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Eval:
    """After each round: judged win rates on the held-out prompts, and what names the best round."""

    pick_by: str = "winrate_vs_base"
    """``winrate_vs_base``, ``winrate_vs_previous``, or ``BENCHMARK:KEY`` (a number in that benchmark's scores,
    e.g. ``mme:perception``)."""
    pick_order: str = "max"
    """``max`` (higher is better) or ``min``, for a ``pick_by`` number where lower is better (e.g. a hallucination
    or attack-success rate)."""
    max_new_tokens: int | None = None
    """Answer length of the held-out answers (default: ``generation.max_new_tokens``); they are greedy."""
    benchmarks: dict = field(default_factory=dict)
    """``{benchmark: data}`` run after each round with ``vlfeedback eval run``'s own function (mme, mmhal, mmvet,
    redteam; data as ``--data NAME=PATH`` takes it), and once for the base."""


@dataclass(frozen=True)
class RoundsConfig:
    """A whole rounds run; see the module docstring for the YAML."""

    base_model: str
    prompts: Path
    heldout: Path
    judge: Judge
    start_adapter: str | None = None
    start_adapter_revision: str | None = None
    rounds: int = 3
    samples: int = 4
    engine: str = "transformers"
    engine_base_url: str | list[str] | None = None
    """``--engine openai``: the vLLM server serving the base and each round's adapter by name (or its replicas, as a
    list)."""
    engine_api_key_env: str | None = None
    batch_size: int = 8
    dtype: str = "auto"
    generation: Generation = Generation()
    pairing: Pairing = Pairing()
    train: Train = Train()
    eval: Eval = Eval()

    def to_dict(self) -> dict:
        """The config as plain data (paths as given)."""
        return _plain(self)


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _section(cls: type, data: object, where: str) -> object:
    """A dataclass from a YAML mapping, every key checked against its fields."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from err


def load_config(path: Path) -> RoundsConfig:
    """Read and check ``rounds.yaml``; relative paths are relative to the file's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping with base_model, prompts, heldout, judge, ...")
    return config_from_dict(data, path.parent, str(path))


def config_from_dict(data: dict, root: Path, where: str = "rounds config") -> RoundsConfig:
    """A checked :class:`RoundsConfig` from plain data (``root``: what relative paths are relative to)."""
    sections = {"judge": Judge, "generation": Generation, "pairing": Pairing, "train": Train, "eval": Eval}
    names = {f.name for f in dataclasses.fields(RoundsConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
    for required in ("base_model", "prompts", "heldout", "judge"):
        if data.get(required) in (None, ""):
            raise UserError(f"{where}: {required!r} is required (see docs/rounds.md for the keys)")
    values = {k: _section(sections[k], data.get(k), f"{where}: {k}") for k in sections} | {
        k: v for k, v in data.items() if k not in sections}  # fmt: skip
    for key in ("prompts", "heldout"):
        values[key] = root / Path(str(values[key])).expanduser()
    if values["eval"].benchmarks and isinstance(values["eval"].benchmarks, dict):
        data = {name: str(root / path) if (root / str(path)).exists() else str(path)
                for name, path in values["eval"].benchmarks.items()}  # fmt: skip
        values["eval"] = dataclasses.replace(values["eval"], benchmarks=data)
    for key in ("base_model", "start_adapter"):
        value = values.get(key)
        if isinstance(value, str) and (root / value).exists():
            values[key] = str(root / value)
    try:
        config = RoundsConfig(**values)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from err
    check(config, where)
    return config


def check(config: RoundsConfig, where: str) -> None:
    """Refuse values no round could run with, naming the key and the fix."""
    problems = {
        "rounds must be at least 1": not isinstance(config.rounds, int) or config.rounds < 1,
        "samples must be at least 2 (pairs need two answers to one prompt)": not isinstance(config.samples, int)
        or config.samples < 2,
        "batch_size must be at least 1": config.batch_size < 1,
        f"engine must be one of {', '.join(ENGINES)}": config.engine not in ENGINES,
        "engine openai needs engine_base_url (the vLLM server serving the base and the adapters)": config.engine
        == "openai"
        and not config.engine_base_url,
        "generation.temperature must be > 0: n samples of one prompt must differ": config.generation.temperature <= 0,
        f"train.reference must be one of {', '.join(REFERENCES)}": config.train.reference not in REFERENCES,
        "train.overrides must be a mapping of TRL flags, e.g. {max_steps: 200}": not isinstance(
            config.train.overrides, dict
        ),
        "judge.max_fail_rate must be between 0 and 1": not 0 <= config.judge.max_fail_rate <= 1,
        f"eval.pick_by must be one of {', '.join(PICK_BY)}, or BENCHMARK:KEY of a benchmark in eval.benchmarks "
        "(e.g. mme:perception)": config.eval.pick_by not in PICK_BY
        and config.eval.pick_by.partition(":")[0] not in config.eval.benchmarks,
        f"eval.pick_order must be one of {', '.join(PICK_ORDERS)}": config.eval.pick_order not in PICK_ORDERS,
        "eval.benchmarks must map a benchmark to its data, e.g. {mme: MME_Benchmark_release_version}": not isinstance(
            config.eval.benchmarks, dict
        ),
    }
    for message, failed in problems.items():
        if failed:
            raise UserError(f"{where}: {message}")
    from vlfeedback_kit.builders.pipeline.endpoint import base_urls

    base_urls(config.judge.base_url, f"{where}: judge.base_url")  # one URL or replicas, each listed once
    if config.engine == "openai":
        base_urls(config.engine_base_url, f"{where}: engine_base_url")
    from vlfeedback_kit.eval.scoring import BENCHMARKS

    unknown = sorted(set(config.eval.benchmarks) - set(BENCHMARKS) | ({"winrate"} & set(config.eval.benchmarks)))
    if unknown:
        known = ", ".join(b for b in BENCHMARKS if b != "winrate")
        raise UserError(f"{where}: eval.benchmarks {unknown[0]!r}: use {known} (the held-out win rates are the "
                        "rounds' own)")  # fmt: skip
    reserved = {"dataset_name", "dataset_config", "output_dir", "model_name_or_path", "init_adapter"}
    clash = sorted(reserved & set(config.train.overrides))
    if clash:
        raise UserError(f"{where}: train.overrides sets {clash[0]!r}, which each round sets itself; remove it")
    try:
        pairing_policy(config)
    except ValueError as err:
        raise UserError(f"{where}: pairing: {err}") from err
    for key in ("prompts", "heldout"):
        if not getattr(config, key).is_dir():
            raise UserError(f"{where}: {key} {getattr(config, key)} is not a folder in the release layout "
                            "(one *.jsonl + merged_images/, e.g. `vlfeedback instructions` output)")  # fmt: skip


def pairing_policy(config: RoundsConfig):
    """The round's :class:`~vlfeedback_kit.builders.pairing.PairingPolicy`."""
    from vlfeedback_kit.builders.pairing import PairingPolicy

    return PairingPolicy.from_dict(dataclasses.asdict(config.pairing))
