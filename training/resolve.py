"""Where a training run's dataset and model come from, exactly, and the reference cache they key.

A Hub dataset or model is pinned to the commit its revision points to when the run starts (the load and every record
then name the same bytes); a local folder is keyed by a digest of its content, so a copy keeps its cache and a changed
byte does not. :func:`cache_parts` gathers everything the reference log-probs depend on, and :func:`reference_cache`
opens the :class:`~.ref_cache.RefLogpCache` of exactly that.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vlfeedback_kit.errors import UserError

SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}-[0-9a-f]{12}\.parquet$")
"""A shard written by ``vlfeedback build``: its name ends in a digest of its bytes (``builders/writer.py``)."""
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt", ".py", ".tiktoken")


def content_digest(paths: list[Path], root: Path) -> str:
    """``local-<hash>`` of files' relative names and bytes: equal for a copy of the folder, new when a byte changes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return "local-" + digest.hexdigest()[:16]


def local_dataset_key(folder: Path, config: str | None) -> str:
    """``local-<hash>`` of the data files ``config`` loads from a local folder: a shard's content-addressed name
    stands for its bytes, any other file is hashed. Other configs, records and the folder's place do not count."""
    from datasets import load_dataset_builder

    files = load_dataset_builder(str(folder), config).config.data_files or {}
    digest = hashlib.sha256()
    for split in sorted(files):
        for name in sorted(str(f) for f in files[split]):
            path = Path(name.removeprefix("file://"))
            if SHARD_NAME.search(path.name):
                digest.update(f"{split}/{path.name}\n".encode())
            else:
                digest.update(f"{split}/{path.name}:{content_digest([path], path.parent)}\n".encode())
    return "local-" + digest.hexdigest()[:16]


def hub_commit(name: str, revision: str | None, repo_type: str) -> str:
    """The commit sha ``revision`` of a Hub repo points to now (from the local cache when offline)."""
    from huggingface_hub import HfApi, constants

    try:
        resolved = HfApi().resolve_revision(
            name, repo_type=repo_type, revision=revision, local_files_only=constants.HF_HUB_OFFLINE
        )
    except Exception as err:  # any failure ends the same way: no commit, no run
        flag = "--dataset_revision" if repo_type == "dataset" else "--model_revision"
        raise UserError(
            f"no folder {name} here, and cannot resolve {repo_type} {name} at revision {revision or 'main'} to a "
            f"commit ({type(err).__name__}); reach the Hub, or pass {flag} with a commit sha in the local cache"
        ) from err
    return resolved.resolved


@dataclass(frozen=True)
class Source:
    """Where a dataset or model comes from: ``load`` is passed to the loader as its revision (a commit sha, or None
    for a local folder), ``key`` identifies the exact bytes (the sha, or a digest of a local folder's content)."""

    name: str
    load: str | None
    key: str

    @property
    def local(self) -> bool:
        """Whether the source is a local folder rather than a Hub repo."""
        return self.load is None


def resolve_dataset(name: str, config: str | None, revision: str | None) -> Source:
    """The dataset's exact revision, resolved before anything is loaded so that the load and the records agree."""
    folder = Path(name)
    if folder.is_dir():
        return Source(name, None, local_dataset_key(folder, config))
    sha = hub_commit(name, revision, "dataset")
    return Source(name, sha, sha)


def resolve_model(name: str, revision: str | None) -> Source:
    """The model's exact revision: the commit its Hub snapshot comes from (what ``config._commit_hash`` was before
    transformers 5), or a digest of a local folder's weights, configs and tokenizer files."""
    folder = Path(name)
    if folder.is_dir():
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES]  # what loading reads
        return Source(name, None, content_digest(files, folder))
    sha = hub_commit(name, revision, "model")
    return Source(name, sha, sha)


def cache_parts(
    script_args, training_args, model_args, processor_settings: dict, data: Source, model: Source,
    init_adapter: Source | None = None,
) -> dict:  # fmt: skip
    """Everything the reference log-probs depend on: the exact data and weights, which policy is the reference (the
    base, or the starting adapter ``init_adapter``), how the model is loaded and run (dtype, attention implementation,
    quantization, autocast precision), the processor, the length limits and the library versions. A local folder is
    keyed by its content only, so a copy of it keeps its cache."""
    import transformers
    import trl

    from vlfeedback_kit.training.init_adapter import reference_identity

    init = {k: str(v) for k, v in (training_args.model_init_kwargs or {}).items() if k != "revision"}
    init.setdefault("dtype", str(model_args.dtype))
    init.setdefault("attn_implementation", str(model_args.attn_implementation or "default"))
    quantization = [model_args.load_in_4bit, model_args.load_in_8bit]
    if model_args.load_in_4bit:
        quantization += [model_args.bnb_4bit_quant_type, model_args.use_bnb_nested_quant]
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    settings = hashlib.sha256(json.dumps(processor_settings, sort_keys=True, default=str).encode())
    return {
        "dataset": {
            "name": None if data.local else data.name,
            "config": script_args.dataset_config,
            "split": script_args.dataset_train_split,
            "revision": data.key,
        },
        "model": {"name": None if model.local else model.name, "revision": model.key, "init": init},
        "reference": reference_identity(training_args, init_adapter),
        "quantization": quantization,
        "autocast": precision,
        "processor": settings.hexdigest(),
        "max_length": training_args.max_length,
        "ld_alpha": training_args.ld_alpha,
        "share_prompt_prefix": training_args.share_prompt_prefix,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
    }


def reference_cache(
    script_args, training_args, model_args, processor, data: Source, model: Source, init_adapter: Source | None = None
):
    """The reference log-prob cache of this exact dataset, model, reference (``init_adapter``: the resolved
    starting adapter) and way of computing (None with ``ref_cache`` off)."""
    from vlfeedback_kit.training.ref_cache import RefLogpCache, default_cache_dir

    if not training_args.ref_cache:
        return None
    parts = cache_parts(script_args, training_args, model_args, processor.to_dict(), data, model, init_adapter)
    folder = (
        Path(training_args.ref_cache_dir)
        if training_args.ref_cache_dir
        else default_cache_dir(script_args.dataset_name)
    )
    return RefLogpCache.open(folder, parts)
