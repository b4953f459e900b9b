"""Layering: no import cycles between the kit's modules, the dataset library never imports the cards, the serving
layer stands on the floor alone, and the arena package is entered only through its public names."""

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
    return {module for module, _ in kit_names(path)}


def kit_names(path: Path) -> set[tuple[str, str | None]]:
    """``(module, name)`` of every run-time import of the kit in ``path``: ``from M import N`` gives ``(M, N)``,
    ``import M`` gives ``(M, None)``."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlfeedback_kit"):
            found.update((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update((a.name, None) for a in node.names if a.name.startswith("vlfeedback_kit"))
    return found


def kit_modules() -> dict[str, Path]:
    """Module name → file, for every module of the kit's folders."""
    return {module_name(path): path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = kit_modules()
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


ARENA = "vlfeedback_kit.eval.arena"
VOTE_READERS = {"is_votes_source", "read_votes", "vote_labels"}
"""What the builders' agreement study may import from the arena: its public vote-reading functions."""
SUBPACKAGES = ("vlfeedback_kit.training", "vlfeedback_kit.builders", "vlfeedback_kit.eval", "vlfeedback_kit.cards")


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_outside_the_arena_imports_its_private_names():
    """The arena is one package with a public surface; an underscore name is its own business."""
    offenders = sorted(
        f"{name}: from {module} import {imported}"
        for name, path in kit_modules().items()
        if not within(name, ARENA)
        for module, imported in kit_names(path)
        if within(module, ARENA) and imported and imported.startswith("_")
    )
    assert offenders == []


def test_builders_read_the_arena_votes_through_its_public_reader_only():
    """builders sits below eval: its one edge up is ``vlfeedback_kit.eval.arena.votes``'s public vote-reading
    functions (``vlfeedback agreement --human VOTES``), and that module stands on the kit's floor alone, so the edge
    can never close a cycle."""
    modules = kit_modules()
    offenders = sorted(
        f"{name}: {module}{f' import {imported}' if imported else ''}"
        for name, path in modules.items()
        if within(name, "vlfeedback_kit.builders")
        for module, imported in kit_names(path)
        if within(module, "vlfeedback_kit.eval") or (module == "vlfeedback_kit" and imported == "eval")
        if module != f"{ARENA}.votes" or imported not in VOTE_READERS
    )
    assert offenders == []
    reader = kit_imports(modules[f"{ARENA}.votes"])
    assert [m for m in reader if m.startswith(SUBPACKAGES)] == []


def test_no_import_cycle_passes_through_the_arena(graph):
    assert [cycle for cycle in cycles(graph) if any(within(m, ARENA) for m in cycle)] == []


def test_the_serving_layer_imports_no_subpackage():
    """``vlfeedback_kit.serving`` is the floor decode, eval and the Space share: it imports nothing from training
    (the Space installs no TRL), builders, eval or the cards."""
    names = kit_names(kit_modules()["vlfeedback_kit.serving"])
    offenders = sorted(f"{module} {imported or ''}".strip() for module, imported in names
                       if module.startswith(SUBPACKAGES) or (module == "vlfeedback_kit" and
                                                             imported in ("training", "builders", "eval", "cards")))
    assert offenders == []
