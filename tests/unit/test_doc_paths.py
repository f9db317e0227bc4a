"""The docs name only paths that exist, and the architecture page names every module.

Every inline code span (single backticks, outside fenced blocks) of README.md, docs/*.md and
infra/README.md is split on whitespace; each word that starts with one of the repo's
top-level folders (`cluster/`, `tests/`, `bench/`, ...) is a repo path and must exist.
`path:name` and `path::test` are checked as `path`; `{a,b}` is expanded; a `*` must match at
least one file, and a path git ignores counts as missing (a clean clone lacks it).
README's layout table names modules by bare file name: each must exist in
its row's folder. Read from the files only: nothing here imports the packages.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]
PACKAGES = ("distill_core", "cluster", "jobs", "distill")
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Top-level folders that are not repo paths in the docs: `runs/` is the default
# `output.dir`, so `runs/quickstart/...` names a run folder a user creates, not a repo file.
NOT_REPO = {"runs"}
# A placeholder (`stages/<name>/`, `examples/<name>.yaml`) names no one path.
PLACEHOLDER = re.compile(r"[<>]")

SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _top_folders() -> list[str]:
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith((".", "_"))
        and not p.name.endswith(".egg-info")
        and p.name not in NOT_REPO
    )


def _spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.extend((number, m.group(1)) for m in SPAN.finditer(line))
    return out


def _expand(word: str) -> list[str]:
    """`a/{b,c}.json` -> [`a/b.json`, `a/c.json`] (every brace group, shell-style)."""
    parts = re.split(r"\{([^{}]*)\}", word)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _ignored(path: Path) -> bool:
    """True when git ignores `path`: it exists here but not in a clean clone (CI)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", str(path.relative_to(ROOT))],
            capture_output=True,
        )
    except FileNotFoundError:  # no git: judge by the file system alone
        return False
    return done.returncode == 0


def _exists(path: str) -> bool:
    if "*" in path:
        return any(not _ignored(p) for p in ROOT.glob(path))
    return (ROOT / path).exists() and not _ignored(ROOT / path)


def repo_paths(path: Path) -> list[tuple[int, str]]:
    """(line, path) of every repo path named in `path`'s code spans."""
    folders = "|".join(map(re.escape, _top_folders()))
    starts = re.compile(rf"^(?:{folders})/")
    found = []
    for number, span in _spans(path):
        for word in span.split():
            word = word.strip("()[],;.'\"")
            if not starts.match(word) or PLACEHOLDER.search(word):
                continue
            found.append((number, word.split(":", 1)[0]))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_backticked_repo_path_exists(doc):
    missing = [
        f"{doc.relative_to(ROOT)}:{line}: {path}"
        for line, path in repo_paths(doc)
        if not all(_exists(p) for p in _expand(path))
    ]
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_the_check_reads_paths_at_all():
    """Guards against a pattern that silently matches nothing."""
    named = {p for doc in DOCS for _, p in repo_paths(doc)}
    assert {"cluster/storage.py", "tests/unit/jobs/test_infra.py"} <= named
    assert _expand("bench/results/ablations_seed{1,2}.json") == [
        "bench/results/ablations_seed1.json",
        "bench/results/ablations_seed2.json",
    ]


def test_architecture_page_names_every_module():
    named = {p for _, p in repo_paths(ARCHITECTURE)}
    modules = sorted(
        str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
    )
    missing = [m for m in modules if m not in named]
    assert not missing, (
        "modules without a line in docs/architecture.md (add each with its one-line job): "
        + ", ".join(missing)
    )


def test_readme_layout_names_modules_of_their_folder():
    """README's layout table names modules by bare file name (`spec.py`) in the row of their
    folder (`distill_core/`): each must be a file of that folder."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.-]+)/` \| `[\w.]+` \| (.*) \|$", text, re.M)
    assert {folder for folder, _ in rows} == set(PACKAGES)
    missing = [
        f"{folder}/{name}"
        for folder, cell in rows
        for name in re.findall(r"`([\w]+\.py)`", cell)
        if not (ROOT / folder / name).is_file()
    ]
    assert not missing, "README's layout names modules that do not exist: " + ", ".join(missing)
