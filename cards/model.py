"""The model card of a training run dir, rendered from the run's own records.

A run dir holds a LoRA adapter (``adapter_config.json``; merged weights optionally in ``merged/``) or merged weights
(``config.json``), the processor files, ``run_info.json`` (base model, dataset and revision, recipe,
hyperparameters, hardware, global batch, final metrics, library versions), and optionally ``training_curves.png``
and ``eval_results.json``. The card's metadata is a
``huggingface_hub`` ``ModelCardData`` (evaluation results become ``model-index`` through ``EvalResult``); its
quick start loads the folder by its absolute path (or, once published, the Hub repo at its release tag, and the base
model at its commit) with the Auto classes and chats about an image, from any working directory. ``base_model`` and
``datasets`` metadata name Hub repos only; a local base model or dataset is described in the body.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vlfeedback_kit.cards.dataset import CITATION, TEMPLATES
from vlfeedback_kit.errors import UserError

TEMPLATE = TEMPLATES / "model_card.md"
RUN_INFO = "run_info.json"
CURVES = "training_curves.png"
EVAL_RESULTS = "eval_results.json"
MERGED_DIR = "merged"
LICENSE = "cc-by-nc-4.0"
TAGS: tuple[str, ...] = ("dpo", "trl", "vlfeedback", "silkie", "vision")
EXAMPLE_IMAGE_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/p-blog/candy.JPG"
"""The image the quick start describes (the one the transformers docs use for image-text-to-text)."""
HUB_URL = "https://huggingface.co"


def hub_id(name: str | None) -> str | None:
    """``name`` when it is a Hub repo id of the form ``org/name`` (not a local path), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.count("/") != 1:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def local_path(name: str | None, revision: str | None) -> str | None:
    """The absolute path of a run's base model or dataset when it was a local folder (training records the absolute
    path and a ``local-`` content digest; an older record may hold a path relative to where training ran), else
    None for a Hub repo id."""
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists() or str(revision or "").startswith("local-") or not hub_id(name):
        return os.path.abspath(path)
    return None


def read_run(run_dir: Path) -> dict:
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


def render_model_card(
    run_dir: Path,
    repo_id: str | None = None,
    revision: str | None = None,
    eval_results: Path | None = None,
    license: str = LICENSE,
) -> ModelCard:
    """Render the card of a run dir; ``repo_id``/``revision`` point the quick start at a Hub release.

    Evaluation results come from ``eval_results`` or else the run dir's ``eval_results.json``, when present.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    is_adapter = (run_dir / "adapter_config.json").is_file()
    model_id = repo_id or str(run_dir.resolve())
    title = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name
    results_path = eval_results or (run_dir / EVAL_RESULTS if (run_dir / EVAL_RESULTS).is_file() else None)
    evaluations = read_eval_results(results_path) if results_path else []
    reference = read_reference(results_path) if results_path else []
    base_revision, dataset = run.get("base_model_revision"), dict(run["dataset"])
    base_local = local_path(run["base_model"], base_revision)
    base_model = base_local or run["base_model"]
    dataset_local = local_path(dataset["name"], dataset.get("revision"))
    dataset["name"] = dataset_local or dataset["name"]
    base_id = None if base_local else hub_id(base_model)
    dataset_id = None if dataset_local else hub_id(dataset["name"])
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
        run=run,
        is_adapter=is_adapter,
        model_id=model_id,
        revision=revision,
        pin=f', revision="{revision}"' if revision else "",
        base_pin=f', revision="{base_revision}"' if base_revision and base_id else "",
        base_model=base_model,
        base_local=bool(base_local),
        dataset_local=bool(dataset_local),
        base_model_url=f"{HUB_URL}/{base_id}" if base_id else None,
        base_model_revision=base_revision,
        dataset=dataset,
        dataset_url=f"{HUB_URL}/datasets/{dataset_id}" if dataset_id else None,
        image_url=EXAMPLE_IMAGE_URL,
        hyperparameters={k: v if isinstance(v, str) else json.dumps(v) for k, v in run["hyperparameters"].items()},
        metrics={k: f"{v:.4g}" if isinstance(v, float) else v for k, v in run.get("metrics", {}).items()},
        merged_subfolder=MERGED_DIR if (run_dir / MERGED_DIR / "config.json").is_file() else None,
        curves=CURVES if (run_dir / CURVES).is_file() else None,
        curves_file=CURVES,
        evaluations=evaluations,
        reference=reference,
        citation=CITATION.read_text(encoding="utf-8").strip(),
    )


def write_model_card(run_dir: Path, eval_results: Path | None = None, license: str = LICENSE) -> Path:
    """Write ``README.md`` into a run dir (what training calls when it ends); returns its path."""
    path = Path(run_dir) / "README.md"
    render_model_card(Path(run_dir), eval_results=eval_results, license=license).save(path)
    return path
