"""Optional dependency groups (pip extras) and the version ranges the training extensions are tested with.

The core install is the dataset side (build, inspect, pairs, cards, publish). Training, the feedback pipeline's
judges, evaluation and the Space each need an extra; a verb whose extra is missing stops with one line naming the
``pip install`` to run. The version ranges are read from the installed distribution's own metadata (the pins in
``pyproject.toml``), so the guard and the pins cannot drift apart.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

DISTRIBUTION = "vlfeedback-kit"

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "transformers", "trl", "peft", "accelerate"),
    "pipeline": ("openai",),
    "eval": ("openai", "evaluate"),
    "space": ("gradio",),
}
"""The import names each extra provides (what a verb of that extra imports)."""

GUARDED: tuple[str, ...] = ("trl", "transformers", "peft")
"""Distributions whose private or recent APIs the training extensions use: their installed versions must lie in
the range this release pins (``[train]`` in pyproject.toml)."""


class MissingExtra(ImportError):
    """A verb needs an extra that is not installed."""

    def __init__(self, verb: str, extra: str, modules: list[str]) -> None:
        self.extra = extra
        super().__init__(
            f"{verb} needs the [{extra}] extra (missing: {', '.join(modules)}); "
            f'run: pip install "{DISTRIBUTION}[{extra}]"'
        )


class IncompatibleVersion(ImportError):
    """An installed dependency lies outside the version range the kit's extensions are tested with."""


def missing_modules(extra: str) -> list[str]:
    """The import names of ``extra`` that cannot be found (a module blocked in ``sys.modules`` counts as missing)."""
    missing = []
    for module in EXTRA_MODULES[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def require(verb: str, *extras: str) -> None:
    """Raise :class:`MissingExtra` for the first of ``extras`` with a module that cannot be imported."""
    for extra in extras:
        missing = missing_modules(extra)
        if missing:
            raise MissingExtra(verb, extra, missing)


def extra_of(module: str) -> str | None:
    """The extra that provides the top-level import name of ``module`` (None for core or unknown modules)."""
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def pinned_ranges(extra: str = "train") -> dict[str, str]:
    """``{distribution: specifier}`` of ``extra`` as this installed release declares it ({} if not installed)."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            ranges[requirement.name] = str(requirement.specifier)
    return ranges


def check_versions(
    installed: dict[str, str | None] | None = None, ranges: dict[str, str] | None = None
) -> None:
    """Refuse (:class:`IncompatibleVersion`, one line) an installed TRL / transformers / PEFT outside the tested
    range. Distributions that are not installed are left to :func:`require`."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    ranges = pinned_ranges() if ranges is None else ranges
    if installed is None:
        installed = {name: _installed_version(name) for name in GUARDED}
    wrong = []
    for name in GUARDED:
        version, spec = installed.get(name), ranges.get(name)
        if version is None or not spec:
            continue
        if not SpecifierSet(spec).contains(Version(version), prereleases=True):
            wrong.append(f"{name} {version} (supported: {spec})")
    if wrong:
        pins = " ".join(f'"{name}{ranges[name]}"' for name in GUARDED if ranges.get(name))
        raise IncompatibleVersion(
            f"vlfeedback_kit.training is tested with other versions than installed: {'; '.join(wrong)}; "
            f"run: pip install {pins}"
        )


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
