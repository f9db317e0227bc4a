"""Reading what a run (or sweep) folder holds, local or in S3, without trusting it: a file
that is there but unusable (a folder where a file belongs, truncated JSON, YAML that does
not parse, a report missing sections) is a `DamagedFile` naming the file and the reason,
never a traceback. `distill report`, `runs list`, `export` and the resume checks of `run`
and `tune` read through here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.cluster.storage import Storage, StorageError, StorageNotFound, open_storage
from distill.core.spec import SpecError
from distill.core.spec_loading import parse_yaml_mapping

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
SWEEP_REPORT_FILE = "sweep_report.json"


class DamagedFile(SpecError):
    """A run file that exists but cannot be used. `str()` names the file by its full
    location; `relpath` and `reason` are the parts (a `runs list` row shows those)."""

    def __init__(self, run: Storage | str, relpath: str, reason: str) -> None:
        root = run if isinstance(run, str) else run.uri
        super().__init__(f"{root}/{relpath}: {reason}")
        self.relpath = relpath
        self.reason = reason


def open_readable(uri: str, s3, what: str) -> Storage:
    """Open a location to read from and check it in seconds (S3: head-bucket with short
    timeouts; local: the folder exists). Failures are one-line SpecErrors naming `what`."""
    try:
        storage = open_storage(uri, s3)
        storage.check_readable()
        return storage
    except StorageError as exc:
        raise SpecError(f"{what}: {exc}") from None


def read_text_file(run: Storage, relpath: str) -> str:
    """The file's text; StorageNotFound when nothing is there, DamagedFile when a folder is
    there instead or the bytes are not UTF-8."""
    try:
        data = run.get(relpath)
    except StorageNotFound:
        if run.exists(relpath):
            raise DamagedFile(run, relpath, "is a folder, expected a file") from None
        raise
    except OSError as exc:
        raise DamagedFile(run, relpath, f"cannot read it ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(run, relpath, "not UTF-8 text") from None


def read_json_file(run: Storage, relpath: str) -> dict:
    """A JSON object from the run; DamagedFile when it is not one (e.g. truncated)."""
    text = read_text_file(run, relpath)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        reason = "empty file" if not text.strip() else f"not valid JSON{where} (truncated?)"
        raise DamagedFile(run, relpath, reason) from None
    if not isinstance(doc, dict):
        raise DamagedFile(run, relpath, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def read_yaml_file(run: Storage, relpath: str = CONFIG_FILE) -> dict:
    """A YAML mapping from the run (e.g. its resolved `config.yaml`); DamagedFile when the
    file does not parse or holds something else."""
    text = read_text_file(run, relpath)
    try:
        return parse_yaml_mapping(text, relpath)
    except SpecError as exc:
        raise DamagedFile(run, relpath, str(exc).removeprefix(f"{relpath}: ")) from None


# -- report shapes ------------------------------------------------------------------------

# What the readers of a report use, by key: a type (or tuple of types) or a nested shape;
# `[shape]` is a list of items of that shape. Keys a reader does not use are not checked.
NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
REPORT_SHAPE: dict[str, Any] = {
    "run": {"name": str, "wall_time_s": NUMBER},
    "size": {"teacher_parameters": NUMBER, "student_parameters": NUMBER},
    "quality": {
        "metric": str,
        "n": NUMBER,
        "teacher": OPTIONAL_NUMBER,
        "student": OPTIONAL_NUMBER,
        "retention": OPTIONAL_NUMBER,
    },
    "speed": {
        "unit": str,
        "teacher": OPTIONAL_NUMBER,
        "student": OPTIONAL_NUMBER,
        "speedup": OPTIONAL_NUMBER,
    },
    "training": {
        "steps": OPTIONAL_NUMBER,
        "first_loss": OPTIONAL_NUMBER,
        "final_loss": OPTIONAL_NUMBER,
        "samples_per_s": OPTIONAL_NUMBER,
        "num_workers": NUMBER,
        "zero_stage": NUMBER,
        "precision": str,
    },
    "paths": {"student": str},
    "task": (dict, type(None)),
    "stages": (list, type(None)),
}
SWEEP_REPORT_SHAPE: dict[str, Any] = {
    "sweep": dict,
    "teacher": {"quality": OPTIONAL_NUMBER, "parameters": OPTIONAL_NUMBER},
    "trials": [{"trial_id": str, "status": str, "params": dict, "metrics": dict}],
    "counts": {"completed": int, "stopped": int, "error": int},
    "pareto": {"quality_vs_speedup": list},
    "chosen": (dict, type(None)),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object"}
_TYPE_NAMES.update({list: "a list", bool: "true or false", type(None): "null"})


def check_same_as_existing(
    storage: Storage,
    relpath: str,
    current: dict,
    keys: tuple[str, ...],
    what: str,
    advice: str,
    shape: Callable[[str, Any], Any] = lambda key, value: value,
) -> None:
    """Refuse, naming the first differing key, to continue a run or sweep in `storage` whose
    saved `relpath` (config.yaml, sweep.yaml) differs from `current` in any of `keys`, as
    compared through `shape(key, value)`; nothing to compare when the file is not there.
    what: "run" or "sweep"; advice: how to start a fresh one instead."""
    if not storage.exists(relpath):
        return
    try:
        previous = read_yaml_file(storage, relpath)
    except DamagedFile as exc:
        raise SpecError(f"{exc}; the existing {what}'s file is unreadable: {advice}") from None
    for key in keys:
        if shape(key, previous.get(key)) != shape(key, current.get(key)):
            raise SpecError(
                f"{key}: differs from the existing {what} in {storage.uri}; {advice} to start "
                f"a fresh {what}"
            )


def shape_problem(doc: Any, shape: Any, where: str = "") -> str | None:
    """Why `doc` does not have `shape` (the first problem, naming its key), or None."""
    if isinstance(shape, dict):
        if not isinstance(doc, dict):
            return f"{where or 'the file'}: expected an object, got {type(doc).__name__}"
        for key, inner in shape.items():
            if key not in doc:
                if isinstance(inner, tuple) and type(None) in inner:
                    continue  # optional
                return f"missing {'section ' if not where else ''}'{where}{key}'"
            problem = shape_problem(doc[key], inner, f"{where}{key}.")
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(doc, list):
            return f"{where.rstrip('.')}: expected a list, got {type(doc).__name__}"
        for i, item in enumerate(doc):
            problem = shape_problem(item, shape[0], f"{where}{i}.")
            if problem:
                return problem
        return None
    types_ = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(doc, bool) and bool not in types_:
        ok = False  # true/false is no count or score
    else:
        ok = isinstance(doc, types_)
    if ok:
        return None
    wanted = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in types_))
    return f"{where.rstrip('.')}: expected {wanted}, got {json.dumps(doc)[:40]}"


def check_report(run: Storage, relpath: str, report: dict) -> dict:
    """`report` when it has what the readers use; DamagedFile naming what is missing."""
    shape = SWEEP_REPORT_SHAPE if relpath.endswith(SWEEP_REPORT_FILE) else REPORT_SHAPE
    problem = shape_problem(report, shape)
    if problem:
        raise DamagedFile(run, relpath, f"not a complete distill report ({problem})")
    return report


@dataclass(frozen=True)
class RunReport:
    """A finished run's or sweep's report, checked against the shape its readers use."""

    kind: str  # "run" (report.json) or "sweep" (sweep_report.json)
    root: str  # the folder's location (a path or s3:// URI)
    relpath: str
    report: dict

    def formatted(self, format_fn: Callable[[dict], str]) -> str:
        """`format_fn(report)`; values that still do not fit (a zero parameter count, say)
        make a DamagedFile rather than a traceback."""
        try:
            return format_fn(self.report)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            ZeroDivisionError,
        ) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DamagedFile(
                self.root, self.relpath, f"not a readable distill report ({reason})"
            ) from None


def read_run_report(location: str, s3=None) -> RunReport:
    """The checked report of a finished sweep (`sweep_report.json`) or run (`report.json`)."""
    where = str(location).rstrip("/")
    try:
        storage = open_storage(location, s3)
        storage.check_readable()
        relpath = SWEEP_REPORT_FILE if storage.exists(SWEEP_REPORT_FILE) else REPORT_FILE
        report = read_json_file(storage, relpath)
    except StorageNotFound:  # before StorageError, which it is too
        raise SpecError(
            f"report: {where}/{REPORT_FILE} not found (has the run finished?)"
        ) from None
    except StorageError as exc:
        raise SpecError(f"report: {exc}") from None
    kind = "sweep" if relpath == SWEEP_REPORT_FILE else "run"
    return RunReport(kind, storage.uri, relpath, check_report(storage, relpath, report))
