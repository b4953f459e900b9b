"""The model card of a training run dir, rendered from the run's own records.

A run dir holds a LoRA adapter (``adapter_config.json``; merged weights optionally in ``merged/``) or merged weights
(``config.json``), the processor files, ``run_info.json`` (base model, dataset and revision, recipe,
hyperparameters, hardware, global batch, final metrics, library versions), and optionally ``training_curves.png``
and ``eval_results.json``. The card's metadata is a
``huggingface_hub`` ``ModelCardData`` (evaluation results become ``model-index`` through ``EvalResult``); its
quick start loads the Hub repo at its release tag (and the base model at its commit) with the Auto classes and
chats about an image. ``base_model`` and ``datasets`` metadata name Hub repos only.

Nothing here carries an absolute local path: a local base model, dataset or run dir is named by its folder name,
never located (``run_info.json`` records ``{"name": ..., "local": true}``; :func:`public_files` rewrites what a
run dir holds from older runs or from PEFT — ``adapter_config.json``'s base path — before it is published).
What the card says about the training pairs follows the dataset's origin as training recorded it
(``dataset.origin``: the original VLFeedback release, a release judged through the kit's pipeline, the kit's
synthetic sample, or unknown).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vlfeedback_kit.cards.dataset import CITATION, ORIGINAL_LICENSE, ORIGINAL_REPO, TEMPLATES
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.files import folder_name
from vlfeedback_kit.hub_ids import is_hub_id

TEMPLATE = TEMPLATES / "model_card.md"
RUN_INFO = "run_info.json"
CURVES = "training_curves.png"
EVAL_RESULTS = "eval_results.json"
LINEAGE = "lineage.json"
"""Written by ``vlfeedback rounds``: the run's round, parent policy, data config and win rates (the card's Lineage)."""
MERGED_DIR = "merged"
LICENSE = ORIGINAL_LICENSE
"""The default licence of the weights: the original release's, for a run on it (or on data of unrecorded origin)."""
REWRITTEN_RECORDS: tuple[str, ...] = (RUN_INFO, "resolved_config.yaml", "trainer_state.json", "adapter_config.json")
"""Run-dir records that may hold local paths: published rewritten, each local path replaced by its folder name."""
TEXT_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".jinja", ".py", ".csv")
TAGS: tuple[str, ...] = ("dpo", "trl", "vlfeedback", "silkie", "vision")
EXAMPLE_IMAGE_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/p-blog/candy.JPG"
"""The image the quick start describes (the one the transformers docs use for image-text-to-text)."""
HUB_URL = "https://huggingface.co"
MPO: tuple[tuple[str, float], ...] = (("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0))
"""InternVL's mixed preference optimisation as TRL loss terms and weights (the ``silkie-mpo-*`` recipes)."""


def is_local(name: str | None, revision: str | None, local: bool | None = None) -> bool:
    """Whether a run's base model or dataset was a local folder: recorded as such (``local``), or, in an older
    record, an absolute path, a folder here, a ``local-`` content digest, or a name that is no Hub id."""
    if local is not None:
        return bool(local)
    if not name:
        return False
    path = Path(name).expanduser()
    return path.is_absolute() or path.exists() or str(revision or "").startswith("local-") or not is_hub_id(name)


def unlocated(value: object) -> object:
    """``value`` with every absolute path (a string, or inside lists and dicts) replaced by its folder name."""
    if isinstance(value, dict):
        return {key: unlocated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unlocated(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value) and folder_name(value) != value:
        return folder_name(value)
    return value


def source_record(name: str, local: bool) -> str | dict:
    """How ``run_info.json`` records a base model: a Hub id as it is, a local folder as ``{"name", "local"}``."""
    return {"name": folder_name(name), "local": True} if local else name


def base_of(run: dict) -> tuple[str, bool]:
    """A run's base model as ``(name, local)``, from this or an older ``run_info.json``."""
    base = run.get("base_model")
    if isinstance(base, dict):
        name, local = str(base.get("name") or base.get("id") or ""), base.get("local")
    else:
        name, local = str(base or ""), None
    local = is_local(name, run.get("base_model_revision"), local)
    return (folder_name(name) if local else name), local


def dataset_of(run: dict) -> tuple[dict, bool]:
    """A run's dataset record with its name unlocated, and whether it was a local folder."""
    dataset = dict(run.get("dataset") or {})
    local = is_local(dataset.get("name"), dataset.get("revision"), dataset.get("local"))
    if local and dataset.get("name"):
        dataset["name"] = folder_name(dataset["name"])
    return dataset, local


def public_run_info(run: dict) -> dict:
    """``run_info.json`` as it is published: local sources named, not located, and no other absolute path."""
    base, base_local = base_of(run)
    dataset, dataset_local = dataset_of(run)
    return unlocated(
        run
        | {"base_model": source_record(base, base_local)}
        | ({"dataset": dataset | ({"local": True} if dataset_local else {})} if run.get("dataset") else {})
    )


def public_files(run_dir: Path, run: dict) -> dict[str, bytes]:
    """The run-dir records (``REWRITTEN_RECORDS``, ``merged/`` included) rewritten with no absolute local path:
    what ``publish model`` uploads in their place. PEFT's ``base_model_name_or_path`` becomes the base's name."""
    base, base_local = base_of(run)
    rewritten: dict[str, bytes] = {}
    for path in sorted(p for name in REWRITTEN_RECORDS for p in (run_dir / name, run_dir / MERGED_DIR / name)):
        if not path.is_file():
            continue
        key = path.relative_to(run_dir).as_posix()
        if path.name == RUN_INFO:
            data = public_run_info(run)
        elif path.suffix == ".yaml":
            data = unlocated(yaml.safe_load(path.read_text(encoding="utf-8")))
            rewritten[key] = yaml.safe_dump(data, sort_keys=False).encode("utf-8")
            continue
        else:
            data = unlocated(json.loads(path.read_text(encoding="utf-8")))
        if path.name == "adapter_config.json" and base_local and data.get("base_model_name_or_path"):
            data["base_model_name_or_path"] = base
        rewritten[key] = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    return rewritten


def check_no_local_paths(files: dict[str, Path | bytes], roots: list[Path]) -> None:
    """Refuse to publish a text file that still names a folder of this machine (one of ``roots``)."""
    needles = sorted({str(root) for root in roots if len(root.parts) > 2}, key=len)
    for name, source in files.items():
        if not name.endswith(TEXT_SUFFIXES):
            continue
        text = (source if isinstance(source, bytes) else source.read_bytes()).decode("utf-8", errors="replace")
        found = next((needle for needle in needles if needle in text), None)
        if found is not None:
            raise UserError(
                f"{name} names a local folder ({found}); the kit publishes no local path — remove it from the file "
                "(or leave the file out of the folder) and publish again"
            )


def read_run_info(run_dir: Path) -> dict:
    """``run_info.json`` of a run dir, after checking the folder holds an adapter or merged weights."""
    info_path = run_dir / RUN_INFO
    if not info_path.is_file():
        raise UserError(f"{run_dir} has no {RUN_INFO}; is it a run dir written by `vlfeedback train`?")
    if not (run_dir / "adapter_config.json").is_file() and not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)")
    return json.loads(info_path.read_text(encoding="utf-8"))


def read_eval_results(path: Path) -> list[dict]:
    """The ``results`` list of an eval-results JSON; an error naming the file when it is malformed."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not an eval-results JSON with a `results` list: {err}") from err
    required = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
    for index, result in enumerate(results):
        missing = [key for key in required if key not in result]
        if missing:
            raise UserError(f"{path}: results[{index}] lacks {', '.join(missing)}")
    return results


def read_reference(path: Path) -> list[dict]:
    """The ``reference`` list of an eval-results JSON: numbers reported elsewhere (the paper), shown in the card
    body beside ours with their source, never in ``model-index``."""
    reference = json.loads(path.read_text(encoding="utf-8")).get("reference") or []
    for index, entry in enumerate(reference):
        missing = [key for key in ("model", "benchmark", "metric", "value", "source") if key not in entry]
        if missing:
            raise UserError(f"{path}: reference[{index}] lacks {', '.join(missing)}")
    return reference


def eval_result(result: dict) -> EvalResult:
    """One result of the eval-results JSON as an ``EvalResult``; a URL ``source`` becomes its ``source_url``."""
    fields = set(EvalResult.__dataclass_fields__)
    source = str(result.get("source") or "")
    extra = {"source_url": source} if source.startswith(("http://", "https://")) else {}
    return EvalResult(**{key: value for key, value in result.items() if key in fields}, **extra)


def data_origin(dataset: dict) -> str | None:
    """Where the training pairs' ratings come from, as training recorded it (see ``cards.dataset.release_origin``);
    the original release's Hub repo is known by its id; None when nothing was recorded."""
    if dataset.get("origin"):
        return str(dataset["origin"])
    return "original" if str(dataset.get("name") or "").lower() == ORIGINAL_REPO.lower() else None


def loss_formula(hyperparameters: dict) -> str | None:
    """The weighted sum of TRL loss terms a run trained with (``0.8 × sigmoid + 0.2 × bco_pair + 1 × sft``), or None
    for the plain sigmoid DPO loss."""
    types = hyperparameters.get("loss_type") or ["sigmoid"]
    types = [types] if isinstance(types, str) else list(types)
    weights = hyperparameters.get("loss_weights") or [1.0] * len(types)
    if types == ["sigmoid"] and list(weights) == [1.0]:
        return None
    formula = " + ".join(f"{weight:g} × {name}" for weight, name in zip(weights, types))
    return formula + (", mixed preference optimisation (MPO)" if list(zip(types, weights)) == list(MPO) else "")


def starting_point(run: dict) -> str | None:
    """Where training started, for the card: the starting adapter named (a Hub one linked, at its commit; a local
    one by folder name and content digest), or None for a new adapter or a run recorded before ``init_adapter``."""
    adapter = run.get("init_adapter")
    if not adapter:
        return None
    name, revision = adapter.get("name"), adapter.get("revision")
    if adapter.get("local"):
        return f"the LoRA adapter `{folder_name(str(name))}` (a local folder; content digest `{revision}`), trained on"
    return f"the LoRA adapter [`{name}`]({HUB_URL}/{name}) (revision `{revision}`), trained on"


def render_model_card(
    run_dir: Path,
    repo_id: str | None = None,
    revision: str | None = None,
    eval_results: Path | None = None,
    license: str | None = None,
) -> ModelCard:
    """Render the card of a run dir; ``repo_id``/``revision`` point the quick start at a Hub release.

    Evaluation results come from ``eval_results`` or else the run dir's ``eval_results.json``, when present.
    ``license`` defaults to the original release's for a run on it or on data of unrecorded origin, else none.
    """
    run_dir = Path(run_dir)
    run = read_run_info(run_dir)
    is_adapter = (run_dir / "adapter_config.json").is_file()
    title = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name
    model_id = repo_id or title
    results_path = eval_results or (run_dir / EVAL_RESULTS if (run_dir / EVAL_RESULTS).is_file() else None)
    evaluations = read_eval_results(results_path) if results_path else []
    reference = read_reference(results_path) if results_path else []
    base_revision = run.get("base_model_revision")
    base_model, base_local = base_of(run)
    dataset, dataset_local = dataset_of(run)
    origin = data_origin(dataset)
    license = license or (LICENSE if origin in ("original", None) else None)
    base_id = base_model if not base_local and is_hub_id(base_model) else None
    dataset_id = dataset.get("name") if not dataset_local and is_hub_id(dataset.get("name")) else None
    data = ModelCardData(
        base_model=base_id,
        base_model_relation=("adapter" if is_adapter else "finetune") if base_id else None,
        datasets=[dataset_id] if dataset_id else None,
        training_data={key: dataset[key] for key in ("name", "config", "split", "revision") if key in dataset},
        pipeline_tag="image-text-to-text",
        library_name="peft" if is_adapter else "transformers",
        tags=[*TAGS, "lora"] if is_adapter else list(TAGS),
        license=license,
        language="en",
        model_name=title if evaluations else None,
        eval_results=[eval_result(result) for result in evaluations] or None,
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=title,
        run=public_run_info(run),
        is_adapter=is_adapter,
        model_id=model_id,
        published=repo_id is not None,
        revision=revision,
        pin=f', revision="{revision}"' if revision else "",
        base_pin=f', revision="{base_revision}"' if base_revision and base_id else "",
        base_model=base_model,
        base_local=base_local,
        dataset_local=dataset_local,
        base_model_url=f"{HUB_URL}/{base_id}" if base_id else None,
        base_model_revision=base_revision,
        dataset=dataset,
        dataset_url=f"{HUB_URL}/datasets/{dataset_id}" if dataset_id else None,
        origin=origin,
        judge_models=dataset.get("judges") or [],
        license=license,
        image_url=EXAMPLE_IMAGE_URL,
        hyperparameters={k: v if isinstance(v, str) else json.dumps(v) for k, v in run["hyperparameters"].items()},
        loss=loss_formula(run["hyperparameters"]),
        starting_point=starting_point(run),
        reference_policy=run.get("reference_policy"),
        metrics={k: f"{v:.4g}" if isinstance(v, float) else v for k, v in run.get("metrics", {}).items()},
        merged_subfolder=MERGED_DIR if (run_dir / MERGED_DIR / "config.json").is_file() else None,
        curves=CURVES if (run_dir / CURVES).is_file() else None,
        curves_file=CURVES,
        evaluations=evaluations,
        reference=reference,
        lineage=json.loads((run_dir / LINEAGE).read_text(encoding="utf-8")) if (run_dir / LINEAGE).is_file() else None,
        citation=CITATION.read_text(encoding="utf-8").strip(),
    )


def write_model_card(run_dir: Path, eval_results: Path | None = None, license: str | None = None) -> Path:
    """Write ``README.md`` into a run dir (what training calls when it ends); returns its path."""
    path = Path(run_dir) / "README.md"
    render_model_card(Path(run_dir), eval_results=eval_results, license=license).save(path)
    return path
