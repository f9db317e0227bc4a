"""The import graph: layers point down (jobs -> cluster -> core), core never imports Ray,
and no module reaches back to itself through imports (no cycles), counting imports inside
functions too: a deferred import is still a dependency.

Read from the source with `ast`, so nothing here imports the packages it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Folder on disk -> installed package name (pyproject.toml's package-dir), lowest floor first.
LAYERS = {"distill_core": "distill.core", "cluster": "distill.cluster", "jobs": "distill.jobs"}
FLOOR = {"distill.core": 0, "distill.cluster": 1, "distill.jobs": 2, "distill": 3}
# Third-party packages a floor must not import (the floor, and the floors below it).
FORBIDDEN = {"distill.core": ("ray", "deepspeed", "boto3", "botocore", "pyarrow")}


def _modules() -> dict[str, Path]:
    found = {"distill": ROOT / "distill" / "__init__.py"}
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports (absolute names; submodules resolved when known)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            for alias in node.names:  # `from pkg import submodule`
                if f"{module}.{alias.name}" in known:
                    out.add(f"{module}.{alias.name}")
    return out


def _floor(module: str) -> str | None:
    for package in sorted(FLOOR, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_every_layer_folder_has_modules(graph):
    for package in LAYERS.values():
        assert any(m.startswith(package + ".") for m in graph), package


def test_no_import_points_up_a_floor(graph):
    upward = []
    for module, imports in graph.items():
        here = _floor(module)
        for imported in imports:
            there = _floor(imported)
            if there is not None and FLOOR[there] > FLOOR[here]:
                upward.append(f"{module} -> {imported}")
            top = imported.split(".")[0]
            for floor, banned in FORBIDDEN.items():
                if here == floor and top in banned:
                    upward.append(f"{module} -> {imported} ({floor} never imports {top})")
    assert not upward, "imports that climb a floor:\n" + "\n".join(sorted(upward))


def test_no_import_cycles(graph):
    edges = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    # A package's __init__ importing its own submodules is how a package exposes them,
    # not a cycle between peers: leave parent -> child edges out.
    edges = {m: {i for i in out if not i.startswith(m + ".")} for m, out in edges.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _private_imports(path: Path) -> list[str]:
    """`from distill... import _name` lines: another module's private name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    """What several modules share is public (no leading underscore) and documented."""
    roots = [ROOT / folder for folder in LAYERS] + [
        ROOT / "distill",
        ROOT / "tests",
        ROOT / "bench",
    ]
    offenders = {
        str(path.relative_to(ROOT)): names
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if (names := _private_imports(path))
    }
    assert not offenders, offenders


def test_the_checker_sees_an_upward_edge_and_a_cycle(tmp_path):
    """The walk itself: a hand-made upward import and cycle are found."""
    core = tmp_path / "a.py"
    core.write_text("from distill.jobs.cli import main\nimport ray\n")
    imports = _imports("distill.core.a", core, {"distill.jobs.cli"})
    assert "distill.jobs.cli" in imports and "ray" in imports
    assert FLOOR[_floor("distill.jobs.cli")] > FLOOR[_floor("distill.core.a")]
    core.write_text("from distill.core.spec import _hidden\n")
    assert _private_imports(core) == ["distill.core.spec._hidden"]
