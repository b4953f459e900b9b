"""Start a run from an existing LoRA adapter (``init_adapter``) and choose the DPO reference (``reference_policy``).

An on-policy round trains the previous round's adapter further: ``init_adapter`` names it as ``vlfeedback eval`` and
the Space take an adapter (a run dir of ``vlfeedback train``, whose adapter sits at its top; a PEFT adapter folder; or
a Hub id at ``init_adapter_revision``, checked by :func:`vlfeedback_kit.serving.adapter_base`). The base model is
loaded as TRL loads a model id, the adapter with ``PeftModel.from_pretrained(..., is_trainable=True)``.

The adapter's LoRA settings must equal the recipe's (``lora_r``, ``lora_alpha``, ``lora_dropout``, target modules,
DoRA / rsLoRA, modules to save): otherwise the run stops in one line naming the difference and the flags that match
it. The recipe, not the adapter, then stays the one record of what was trained (run_info's hyperparameters and the
model card say the recipe's LoRA settings, and they are true of the adapter).

``reference_policy``: ``base`` — the base model, adapters disabled, as for a new adapter; ``init`` — the starting
adapter, frozen (TRL's own ``"ref"`` copy of it, :data:`~.compat.REFERENCE_ADAPTER`). The reference's identity
(:func:`reference_identity`: the policy, and for ``init`` the adapter's content digest or Hub commit) is part of the
reference cache's key, so values computed against one reference are never served for another.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.training import compat
from vlfeedback_kit.training.resolve import Source, content_digest, hub_commit

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WHERE_NOT_WHAT = ("base_model_name_or_path", "revision", "inference_mode")
"""adapter_config.json fields that say where the base is or how the adapter was last loaded, not what it computes
(``publish model`` rewrites a local base's path): left out of a local adapter's digest."""
LORA_FIELDS = (
    ("r", "lora_r"),
    ("lora_alpha", "lora_alpha"),
    ("lora_dropout", "lora_dropout"),
    ("target_modules", "lora_target_modules"),
    ("use_dora", "use_dora"),
    ("use_rslora", "use_rslora"),
    ("modules_to_save", "lora_modules_to_save"),
)
"""(PEFT ``LoraConfig`` field, the recipe's flag) that must agree between the starting adapter and the recipe."""


def adapter_digest(folder: Path) -> str:
    """``local-<hash>`` of a local adapter: its weights' bytes and its config without :data:`WHERE_NOT_WHAT`, so a
    copy of a run dir (or its published form) keeps the digest and a changed weight does not."""
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if k not in WHERE_NOT_WHAT}
    weights = [folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()]
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(content_digest(weights, folder).encode())
    return "local-" + digest.hexdigest()[:16]


def resolve_adapter(name: str, revision: str | None) -> Source:
    """The exact starting adapter: a local one by :func:`adapter_digest`, a Hub one by the commit ``revision``
    points to now (loaded at that commit, so the records and the cache key name the bytes trained from). Anything
    that is not an adapter is a one-line UserError (the check ``eval`` and the Space use)."""
    from vlfeedback_kit.serving import adapter_base

    adapter_base(name, revision, flag="--init_adapter")
    folder = Path(name).expanduser()
    if folder.is_dir():
        return Source(name, None, adapter_digest(folder))
    sha = hub_commit(name, revision, "model")
    return Source(name, sha, sha)


def resolve_init(args: Any) -> Source | None:
    """``args.init_adapter`` resolved (:func:`resolve_adapter`), or None when the run starts a new adapter."""
    if not getattr(args, "init_adapter", None):
        return None
    return resolve_adapter(args.init_adapter, args.init_adapter_revision)


def adapter_folder(init: Source) -> str:
    """A folder holding the adapter's files: a local adapter's own, a Hub adapter's snapshot at its resolved commit
    (downloaded once into the Hub cache; the config and weights only)."""
    if init.local:
        return init.name
    from huggingface_hub import snapshot_download

    patterns = [ADAPTER_CONFIG, *ADAPTER_WEIGHTS]
    return snapshot_download(init.name, revision=init.load, allow_patterns=patterns)


def reference_identity(args: Any, init: Source | None) -> dict:
    """What the reference is, for the reference cache's key: ``{"policy": "base"}``, or the starting adapter's
    identity (its Hub id and commit, or a local adapter's content digest) for ``reference_policy init``."""
    policy = getattr(args, "reference_policy", "base")
    if policy == "base":
        return {"policy": "base"}
    if init is None:
        raise ValueError("reference_policy init needs the resolved init_adapter")
    return {"policy": "init", "adapter": None if init.local else init.name, "revision": init.key}


def _plain(value: object) -> object:
    """A LoRA setting comparable across a saved config (lists) and a recipe's (sets, tuples, one-item lists)."""
    if isinstance(value, (list, tuple, set)):
        items = sorted(str(v) for v in value)
        return items[0] if len(items) == 1 else items
    return value


def _shell(value: object) -> str:
    """A setting as the flag's value on a command line (a list as its items, each shell-quoted)."""
    plain = _plain(value)
    return " ".join(shlex.quote(str(item)) for item in (plain if isinstance(plain, list) else [plain]))


def check_lora_match(adapter: str, saved: Any, recipe: Any) -> None:
    """Refuse, in one line, a starting adapter whose LoRA settings differ from the recipe's ``peft_config``, naming
    each difference and the flags that would train it as it is."""
    if recipe is None:
        raise UserError(f"--init_adapter {adapter} is a LoRA adapter to train further: set use_peft true")
    differences = [
        (flag, getattr(saved, name, None), getattr(recipe, name, None))
        for name, flag in LORA_FIELDS
        if _plain(getattr(saved, name, None)) != _plain(getattr(recipe, name, None))
    ]
    if differences:
        said = "; ".join(f"{flag} {mine!r} where the recipe has {theirs!r}" for flag, mine, theirs in differences)
        flags = " ".join(f"--{flag} {_shell(mine)}" for flag, mine, _ in differences)
        raise UserError(
            f"--init_adapter {adapter} was trained with other LoRA settings ({said}): pass {flags} to train it "
            "further as it is, or drop --init_adapter to start a new adapter"
        )


def starting_policy(kwargs: dict, init: Source | None) -> Source | None:
    """With ``args.init_adapter``: the trainer's keyword arguments changed to start from that adapter — ``model``
    becomes the base with the adapter loaded trainable (``peft_config`` checked against it, then dropped: TRL
    refuses both) — and the resolved adapter returned; without, None and ``kwargs`` unchanged."""
    args = kwargs.get("args")
    if not getattr(args, "init_adapter", None):
        return None
    from peft import PeftConfig, PeftModel

    init = init or resolve_init(args)
    folder = adapter_folder(init)
    check_lora_match(args.init_adapter, PeftConfig.from_pretrained(folder), kwargs.get("peft_config"))
    model = kwargs["model"]
    if isinstance(model, str):
        model = compat.load_base_model(model, args, kwargs.pop("quantization_config", None))
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    plugin = args.deepspeed_plugin
    kwargs["model"] = PeftModel.from_pretrained(
        model,
        folder,
        is_trainable=True,
        # as TRL's get_peft_model under ZeRO-3: adapter weights in the base's dtype (trl#6089)
        autocast_adapter_dtype=not (plugin is not None and plugin.zero_stage == 3 and not quantized),
    )
    kwargs["peft_config"] = None
    return init


def start_record(init: Source | None, args: Any) -> dict:
    """run_info's record of where the run started and what its reference was: a local adapter by its folder's name
    and content digest (never its location), a Hub adapter by id and commit."""
    from vlfeedback_kit.files import folder_name

    adapter = None
    if init is not None:
        adapter = {
            "name": folder_name(init.name) if init.local else init.name,
            **({"local": True} if init.local else {}),
            "revision": init.key,
            "requested_revision": getattr(args, "init_adapter_revision", None),
        }
    return {"init_adapter": adapter, "reference_policy": getattr(args, "reference_policy", "base")}
