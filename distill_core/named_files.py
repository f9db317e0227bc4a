"""The local files and folders a job spec names, checked without importing torch,
`datasets` or transformers.

`distill run` calls `check_named_files` right after reading the spec, before its heavy
imports: a mistyped data, STS or teacher path is one line about a second after the
command, not after ~10 s of imports. Preflight and the data loaders ask the same
functions, so the line is the same whichever finds the problem first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from distill.core.spec import JobSpec, SpecError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
BUILTIN = "builtin:"


def source_format(path: str, fmt: str = "auto") -> str:
    """`csv`, `tsv`, `json`, `parquet`, `text`, `hub`, `builtin` or `local-unknown`."""
    if fmt != "auto":
        return {"jsonl": "json", "txt": "text"}.get(fmt, fmt)
    if path.startswith(BUILTIN):
        return "builtin"
    suffix = Path(path).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    return "local-unknown" if os.path.exists(path) else "hub"


def data_file_problem(path: str) -> str | None:
    """What is wrong with a local data file on disk, or None."""
    if os.path.isdir(path):
        return "is a folder, expected a file"
    if not os.path.isfile(path):
        return "not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    return None


def sts_file_problem(path: str) -> str | None:
    """What is wrong with a local `evaluation.sts_path` on disk, or None (`builtin:` names
    are the data module's to check)."""
    if path.startswith(BUILTIN):
        return None
    if os.path.isdir(path):
        return f"{path} is a folder, expected an STS file"
    if not os.path.isfile(path):
        return f"file {path} not found"
    return None


def looks_like_local_path(name: str) -> bool:
    """True when `name` is meant as a folder (absolute, relative or home path), not a hub id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.sep + os.path.sep in name


def folder_problem(name: str, path: str | None = None) -> str | None:
    """What is wrong with a model folder named `name` (at `path`, default `name` with `~`
    expanded) when it is meant as a local folder, or None."""
    path = os.path.expanduser(name) if path is None else path
    if not (looks_like_local_path(name) or os.path.isabs(path)) or os.path.isdir(path):
        return None
    return "is a file, expected a model folder" if os.path.exists(path) else "does not exist"


def train_field(index: int, count: int) -> str:
    """The field an error names for train source `index` of `count`."""
    return "data.train" if count == 1 else f"data.train.{index}"


def _absolute(path: str, field: str = "") -> str:
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else path


def absolute_paths(spec: JobSpec) -> JobSpec:
    """Local paths made absolute: Ray workers do not share the driver's working directory.
    Names with nothing on disk (hub models and datasets) are left as they are."""
    return spec.map_paths(_absolute)


def check_named_files(stages: Sequence) -> None:
    """Every stage's (`distill.core.stages.expand_stages`) local data files, STS file and
    teacher folder exist: a SpecError naming the field, as preflight words it, for the
    first that does not (existing paths named absolute, as preflight names them).
    Contents are preflight's to read."""
    for i, stage in enumerate(stages):
        prefix = f"stages.{i} ({stage.name}): " if len(stages) > 1 else ""
        s = absolute_paths(stage.spec)
        problem = folder_problem(s.teacher.name)
        if problem:
            raise SpecError(f"{prefix}teacher.name: folder {s.teacher.name} {problem}")
        sources = s.data.train_sources
        named = [(train_field(j, len(sources)), source) for j, source in enumerate(sources)]
        named += [("data.eval", s.data.eval)] if s.data.eval is not None else []
        for where, source in named:
            if source_format(source.path, source.format) in ("hub", "builtin"):
                continue
            problem = data_file_problem(source.path)
            if problem:
                raise SpecError(f"{prefix}{where}: data file {source.path}: {problem}")
        if s.evaluation.sts_path:
            problem = sts_file_problem(s.evaluation.sts_path)
            if problem:
                raise SpecError(f"{prefix}evaluation.sts_path: {problem}")
