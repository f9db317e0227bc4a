"""Every `slow` marker in tests/ says why the test is slow: `pytest.mark.slow(reason="...")`.

A slow test is left out of the default run, so its marker is where a reader learns what it
costs and whether a default test drives the same path. Read from the source with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_slow(node: ast.AST) -> bool:
    """`pytest.mark.slow` or `mark.slow`."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "slow"
        and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "mark")
            or (isinstance(node.value, ast.Name) and node.value.id == "mark")
        )
    )


def _reason(call: ast.Call) -> str:
    for keyword in call.keywords:
        if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value).strip()
    return ""


def slow_markers(root: Path = TESTS) -> list[tuple[str, int, str]]:
    """(file, line, reason) of every `slow` marker under `root` ("" when it gives none)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        called = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_slow(node.func):
                called[id(node.func)] = _reason(node)
        for node in ast.walk(tree):
            if _is_slow(node):
                where = str(path.relative_to(root))
                found.append((where, node.lineno, called.get(id(node), "")))
    return sorted(found)


def test_every_slow_marker_gives_a_reason():
    markers = slow_markers()
    assert markers, "no slow marker found: the scan reads nothing"
    bare = [f"tests/{path}:{line}" for path, line, reason in markers if not reason]
    assert not bare, 'slow markers without pytest.mark.slow(reason="..."): ' + ", ".join(bare)


def test_the_scan_tells_bare_markers_from_reasoned_ones(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "from pytest import mark\n"
        "@pytest.mark.slow\n"
        "def test_a(): ...\n"
        "@pytest.mark.slow(reason='a second job')\n"
        "def test_b(): ...\n"
        "P = pytest.param(1, marks=mark.slow(reason='  '))\n"
        "pytestmark = pytest.mark.slow(reason=REASON)\n"
    )
    assert slow_markers(tmp_path) == [
        ("test_x.py", 3, ""),
        ("test_x.py", 5, "a second job"),
        ("test_x.py", 7, ""),
        ("test_x.py", 8, ""),
    ]
