"""Benchmarks as data: one YAML per benchmark under ``eval/benchmarks/`` (data layouts, prompt per model family,
generation settings, scorer, judge template, metrics for the model card, the paper's reported numbers)."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from vlfeedback_kit.errors import UserError

FOLDER = Path(__file__).parent / "benchmarks"


@functools.cache
def load_spec(name: str) -> dict:
    """The YAML of benchmark ``name``."""
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FOLDER.glob("*.yaml")))
        raise UserError(f"unknown benchmark {name!r} (known: {known})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prompt_family(model_type: str | None) -> str:
    """The prompt family of a transformers ``model_type`` (``llava*`` → llava, else the default)."""
    return "llava" if model_type and "llava" in model_type else "default"


def build_prompt(spec: dict, family: str, question: str) -> str:
    """The text sent to the model for a question, by the benchmark's prompt for ``family`` (else its default)."""
    prompts = spec["prompt"]
    rule = prompts.get(family) or prompts["default"]
    for suffix in rule.get("strip", []):
        if question.endswith(suffix):
            question = question[: -len(suffix)]
            break
    return rule["template"].format(question=question)


def generation_settings(spec: dict, max_new_tokens: int | None = None):
    """The benchmark's decoding settings (:class:`~vlfeedback_kit.serving.GenerationSettings`)."""
    from vlfeedback_kit.serving import GenerationSettings

    values = dict(spec["generation"])
    if max_new_tokens is not None:
        values["max_new_tokens"] = max_new_tokens
    return GenerationSettings(**values)
