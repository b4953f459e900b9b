"""The model pool of ``decode``: its YAML config, which members answer which instruction, and the members themselves.

A member is a local transformers VLM (served by :mod:`vlfeedback_kit.serving`: batched generation, a seed per item,
optional PEFT adapter) or any OpenAI-compatible endpoint (OpenAI, vLLM, TGI) reached with the ``openai`` client.
See ``pool.example.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from vlfeedback_kit.builders.pipeline.endpoint import base_urls, host_of
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.hub_ids import folder_or_hub_problem

if TYPE_CHECKING:
    from vlfeedback_kit.serving import GenerationSettings

EXAMPLE_FILE = Path(__file__).with_name("pool.example.yaml")
KINDS = ("transformers", "openai")
GENERATION_DEFAULTS = {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0}
MEMBER_KEYS = {
    "name",
    "kind",
    "model",
    "adapter",
    "dtype",
    "device",
    "batch_size",
    "base_url",
    "api_key_env",
    "concurrency",
    "generation",
}


@dataclass(frozen=True)
class Member:
    """One pool model and how it generates. An endpoint member's ``base_url`` is its deployment's first URL (what
    its answers' keys name); ``replicas`` all the URLs it is served at (``base_url`` as a YAML list), so replicas
    can be added or removed without changing an answer's key."""

    name: str
    kind: str
    model: str
    generation: dict = field(default_factory=dict)
    adapter: str | None = None
    dtype: str = "auto"
    device: str | None = None
    batch_size: int = 8
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    replicas: tuple[str, ...] = ()

    def settings(self) -> dict:
        """What is recorded with each response: the member's identity and its generation settings."""
        where = (
            {"adapter": self.adapter, "dtype": self.dtype}
            if self.kind == "transformers"
            else {"endpoint": host_of(self.base_url)}
        )
        return {"kind": self.kind, "model": self.model, **where, **self.generation}

    def decoding(self) -> GenerationSettings:
        """A local member's decoding settings for :mod:`vlfeedback_kit.serving` (each row's seed comes per call)."""
        from vlfeedback_kit.serving import GenerationSettings

        generation = self.generation
        return GenerationSettings(generation["max_new_tokens"], generation["temperature"], generation["top_p"])

    def fingerprint(self) -> str:
        """A hash of everything that changes this member's answers."""
        identity = {"name": self.name, **self.settings(), "base_url": self.base_url}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Pool:
    """The members, how many answer each instruction, and the seed of that draw."""

    members: tuple[Member, ...]
    k: int
    seed: int


def pool_record(pool: Pool) -> dict:
    """The pool as JSON (what a decode store keeps, so ``assemble`` can merge the stores of shards)."""
    return {"k": pool.k, "seed": pool.seed, "members": [asdict(member) for member in pool.members]}


def pool_of_record(record: dict) -> Pool:
    """The pool a decode store recorded (``pool_record``)."""
    members = tuple(Member(**{**spec, "replicas": tuple(spec.get("replicas") or ())}) for spec in record["members"])
    return Pool(members, int(record["k"]), int(record["seed"]))


def load_pool(path: Path, k: int | None = None, seed: int | None = None) -> Pool:
    """A pool from its YAML file (``k`` and ``seed`` override the file's), checked."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"--pool {path}: cannot read it ({err}); see {EXAMPLE_FILE.name}") from err
    defaults = {**GENERATION_DEFAULTS, **(data.get("generation") or {})}
    members = tuple(_member(spec, defaults, path) for spec in data.get("members") or [])
    names = [m.name for m in members]
    pool = Pool(
        members, int(k if k is not None else data.get("k", 4)), int(seed if seed is not None else data.get("seed", 0))
    )
    if len(set(names)) != len(names):
        raise UserError(f"--pool {path}: member names must be unique ({names})")
    if not 1 <= pool.k <= len(members):
        raise UserError(f"--pool {path}: k = {pool.k} needs 1 <= k <= {len(members)} members; change k or pass --k")
    return pool


def _member(spec: dict, defaults: dict, path: Path) -> Member:
    if isinstance(spec, dict) and spec.get("kind") == "transformers" and spec.get("adapter") and not spec.get("model"):
        spec = {**spec, "model": _base_of_adapter(spec, path)}
    if not isinstance(spec, dict) or not spec.get("name") or not spec.get("model"):
        raise UserError(f"--pool {path}: every member needs a name and a model ({spec!r})")
    unknown = set(spec) - MEMBER_KEYS
    generation = {**defaults, **(spec.get("generation") or {})}
    unknown |= {f"generation.{key}" for key in set(generation) - set(GENERATION_DEFAULTS)}
    problems = [
        f"unknown key(s) {sorted(unknown)}" if unknown else "",
        f"kind must be one of {KINDS}" if spec.get("kind") not in KINDS else "",
        "an openai member needs base_url" if spec.get("kind") == "openai" and not spec.get("base_url") else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UserError(f"--pool {path}: member {spec['name']!r}: {'; '.join(problems)}")
    if spec.get("base_url"):
        urls = base_urls(spec["base_url"], f"--pool {path}: member {spec['name']!r}: base_url")
        spec = {**spec, "base_url": urls[0], "replicas": urls}
    return Member(**{**spec, "generation": generation})


def _base_of_adapter(spec: dict, path: Path) -> str | None:
    """The base model of a member given only an adapter (a run dir names the base it was trained from)."""
    from vlfeedback_kit.serving import adapter_base

    try:
        return adapter_base(spec["adapter"], flag="adapter")
    except UserError as err:
        raise UserError(f"--pool {path}: member {spec.get('name')!r}: {err}") from err


def model_problem(name: str, flag: str) -> str | None:
    """Why a local model cannot be loaded — a missing folder, a folder without ``config.json`` (or an adapter's
    ``adapter_config.json``), an id the Hub does not know — or None; checked before any member starts."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
            return f"{flag} {name} is a folder without config.json or adapter_config.json"
        return None
    problem = folder_or_hub_problem(name, flag)
    if problem:
        return problem
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    try:
        hf_hub_download(name, "config.json")
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        return f"{flag} {name}: not a local folder, and the Hub has no such model ({str(err).splitlines()[0][:150]})"
    return None


def adapter_problem(adapter: str) -> str | None:
    """Why an adapter cannot be loaded (the loader's own check: a run dir or adapter folder, or a Hub id), or None."""
    from vlfeedback_kit.serving import adapter_base

    try:
        adapter_base(adapter, flag="adapter")
    except UserError as err:
        return str(err)
    return None


def preflight(members: list[Member]) -> None:
    """Check every member before the first starts: local model folders / Hub ids, and that each ``api_key_env``
    is set. All problems are named at once (one UserError)."""
    problems = []
    for member in members:
        if member.kind == "transformers":
            found = [model_problem(member.model, "model")]
            found += [adapter_problem(member.adapter)] if member.adapter else []
            problems += [f"member {member.name!r}: {p}" for p in found if p]
        elif member.api_key_env and not os.environ.get(member.api_key_env):
            problems.append(f"member {member.name!r}: the environment variable {member.api_key_env} is not set")
    if problems:
        raise UserError(f"--pool: {'; '.join(problems)} (nothing was decoded)")


def sampling_seed(seed: int, image_sha256: str, prompt: str, member: str) -> int:
    """The sampling seed of one answer: a function of the pool seed, the instruction's content and the member's
    name only (not of its place in the remaining work, nor of where the member is served), so a resumed decode
    samples exactly what an uninterrupted one would."""
    blob = json.dumps([seed, image_sha256, prompt, member], ensure_ascii=False)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8], 16)


def assign(item_id: str, pool: Pool) -> list[Member]:
    """The ``k`` distinct members that answer an instruction: seeded by the pool seed and the id only."""
    return random.Random(f"{pool.seed}/{item_id}").sample(list(pool.members), pool.k)


def unit_key(image_sha256: str, prompt: str, member: Member) -> str:
    """The content hash of one (instruction, member) answer."""
    blob = json.dumps({"image": image_sha256, "prompt": prompt, "member": member.fingerprint()}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def chat_request(member: Member, prompt: str, image_url: str) -> dict:
    """The chat completion request a pool endpoint gets for one instruction."""
    generation = member.generation
    return {
        "model": member.model,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": prompt}],
            }
        ],
        "max_tokens": generation["max_new_tokens"],
        "temperature": generation["temperature"],
        "top_p": generation["top_p"],
    }
