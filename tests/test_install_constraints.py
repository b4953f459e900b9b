"""A fresh install is what was tested: constraints.txt pins the exact versions, inside pyproject.toml's ranges; the
extensions' dependencies are bounded above; the README's test command and .ci/run install with the constraints."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def constraints() -> dict[str, Version]:
    """``{canonical name: version}`` of constraints.txt (every line an exact ``name==version`` pin)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert name and version and not re.search(r"[<>~!=;@ ]", name + version), f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def dev_requirements() -> list[Requirement]:
    """The core dependencies and every requirement [dev] reaches through the kit's own extras."""
    extras, todo, found = PROJECT["optional-dependencies"], ["dev"], [Requirement(r) for r in PROJECT["dependencies"]]
    seen = set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in extras[extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def test_every_constraint_lies_inside_the_pins_and_every_dev_requirement_is_pinned():
    pins = constraints()
    assert canonicalize_name(PROJECT["name"]) not in pins  # the kit itself is the editable install, never pinned
    wrong, unpinned = [], []
    for requirement in dev_requirements():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            unpinned.append(requirement.name)
        elif not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement.name}=={version} outside {requirement.specifier}")
    assert not wrong, f"constraints.txt and pyproject.toml disagree: {wrong}"
    assert not unpinned, f"constraints.txt lacks: {unpinned}"
    assert (pins["torch"], pins["torchvision"]) == (Version("2.14.1"), Version("0.29.1"))


def test_the_train_extensions_are_bounded_above():
    """They use private transformers / TRL / PEFT APIs: a release must not float onto an untested minor."""
    ranges = {}
    for line in PROJECT["optional-dependencies"]["train"]:
        requirement = Requirement(line)
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), line
        ranges[requirement.name] = requirement.specifier
    for name in ("transformers", "trl", "peft"):  # guarded at import: the newest tested minor and nothing after it
        tested = constraints()[name]
        assert tested in ranges[name] and Version(f"{tested.major}.{tested.minor + 1}.0") not in ranges[name], name


def test_the_readme_test_command_and_ci_install_from_the_constraints():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme).group(1).strip()
    assert 'pip install -q -e ".[dev]" -c constraints.txt &&' in command
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] != "#"]
    assert ci_lines[-1] == command
    # the install page's one command for trying a newer transformers lifts today's pin (its sed finds the line)
    lifted = re.search(r"sed -i 's/(transformers[^/]+)/", (ROOT / "docs" / "install.md").read_text())
    assert lifted and f'"{lifted.group(1)}"' in (ROOT / "pyproject.toml").read_text()
