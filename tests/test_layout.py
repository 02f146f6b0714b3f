"""The package layout keeps its promises: no import cycles, no module importing another's private names, and the
project's own code on transformers 5's current names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "trl_empg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import in the file, lazy and TYPE_CHECKING ones included."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            if target.startswith("trl_empg"):
                found.append((target, names))
                # `from .pkg import module` imports a module too
                found += [
                    (f"{target}.{name}", [])
                    for name in names
                    if (PACKAGE.parent / f"{target}.{name}".replace(".", "/")).with_suffix(".py").exists()
                ]
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("trl_empg")]
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for target, _ in _imports(path):
            if target in files and target != name:
                graph[name].add(target)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of behaviour: drop parent -> child edges.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for target, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != _module_name(path):
                offenders.append(f"{_module_name(path)} imports {private} from {target}")
    assert not offenders, offenders


def test_the_graph_sees_imports():
    graph = _graph()
    assert "trl_empg.rollout.episode" in graph["trl_empg.rollout.runner"]
    assert "trl_empg.training.config" in graph["trl_empg.training.trainer"]


def test_cycle_detection_finds_a_cycle():
    components = _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(map(sorted, components)) == [["a", "b", "c"], ["d"]]


def test_the_project_uses_activation_checkpointing_names():
    """pyproject filters transformers' warnings about the ``gradient_checkpointing*`` names because TRL and peft still
    call them; this keeps trl_empg's own code and recipes from hiding behind that filter."""
    # EMPGConfig declares the deprecated alias (to tell an explicit old name from the default), entropy_capture says
    # which TRL helper it replaces, and test_trainer checks that an old name in a config is still honoured.
    allowed = {"src/trl_empg/training/config.py", "src/trl_empg/training/entropy_capture.py", "tests/test_trainer.py"}
    sources = [
        path for folder in ("src", "tests", "benchmarks", "examples", "spaces") for path in (REPO / folder).rglob("*")
    ]
    offenders = [
        str(path.relative_to(REPO))
        for path in sources
        if path.suffix in (".py", ".yaml")
        and path != Path(__file__).resolve()
        and str(path.relative_to(REPO)) not in allowed
        and re.search(r"gradient_checkpointing", path.read_text())
    ]
    assert not offenders, f"use activation_checkpointing* (transformers >= 5.23) in {offenders}"
