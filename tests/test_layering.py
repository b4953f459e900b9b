"""Layering: no import cycles between the kit's modules, and the dataset library never imports the cards."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"builders": "vlfeedback_kit.builders", "training": "vlfeedback_kit.training",
           "eval": "vlfeedback_kit.eval", "cards": "vlfeedback_kit.cards", "vlfeedback_kit": "vlfeedback_kit"}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    prefix = FOLDERS[parts[0]].split(".")
    rest = parts[1:] if parts[0] != "vlfeedback_kit" else parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join(prefix + rest)


def kit_imports(path: Path) -> set[str]:
    """Every vlfeedback_kit module ``path`` imports at run time, at module level or inside functions (imports under
    ``if TYPE_CHECKING:`` are for annotations only and run nowhere)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlfeedback_kit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vlfeedback_kit"))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            modules[module_name(path)] = path
    return {name: {m for m in kit_imports(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (depth-first search for back edges), each as the list of modules on it."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_pipeline_modules_import_each_other_without_cycles(graph):
    pipeline = {k: v for k, v in graph.items() if k.startswith("vlfeedback_kit.builders.pipeline")}
    assert cycles(pipeline) == []


def test_the_dataset_library_does_not_import_the_cards(graph):
    """The verbs (commands.py) and the benchmark compose builders with cards; the library modules stay below."""
    offenders = {
        name: sorted(m for m in targets if m.startswith("vlfeedback_kit.cards"))
        for name, targets in graph.items()
        if name.startswith("vlfeedback_kit.builders") and not name.endswith((".commands", ".bench"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}
