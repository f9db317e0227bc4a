"""`distill run`: validate, train on Ray, export, evaluate, report.

distill run [CONFIG.yaml] [--set key=value ...] [--output DIR] [--smoke]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from cluster.job_data import train_eval_texts
from cluster.run_files import PROBE_FILE, STATE_FILE, STUDENT_DIR
from cluster.storage import LocalStorage, is_s3_uri
from jobs.preflight import check_storage, preflight
from jobs.report import build_report
from jobs.spec import JobSpec, SpecError, dump_spec

CONFIG_FILE = "config.yaml"
# Fields that change the trained model's shape or meaning: resuming with others is refused.
_RESUME_KEYS = ("teacher", "student", "objective")


def run_dir_for(spec: JobSpec, output: str | None) -> Path | str:
    if is_s3_uri(output or spec.output.dir):  # an S3 URI is no Path: "s3://" would lose a "/"
        return (output or f"{spec.output.dir.rstrip('/')}/{spec.output.name}").rstrip("/")
    return Path(output) if output else Path(spec.output.dir) / spec.output.name


def _check_resumable(storage: LocalStorage, spec: JobSpec) -> None:
    if not storage.exists(CONFIG_FILE):
        return
    try:
        previous = yaml.safe_load(storage.read_text(CONFIG_FILE)) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        previous = None
    if not isinstance(previous, dict):
        raise SpecError(
            f"{storage.uri}/{CONFIG_FILE}: existing run config is unreadable; "
            "use a new output.name (or --output)"
        )
    current = spec.model_dump(mode="json")
    for key in _RESUME_KEYS:
        if previous.get(key) != current[key]:
            raise SpecError(
                f"{key}: differs from the existing run in {storage.uri}; "
                "use a new output.name (or --output) to start a fresh run"
            )


def run_job(spec: JobSpec, output: str | None = None) -> dict:
    """Run one distillation job end to end and return its report."""
    started = time.perf_counter()
    spec = preflight(spec)
    run_dir = run_dir_for(spec, output)
    storage = check_storage(run_dir, spec, "--output" if output else "output.dir")
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"name": storage.name})})
    _check_resumable(storage, spec)
    try:
        storage.write_text(CONFIG_FILE, dump_spec(spec))
    except OSError as exc:
        raise SpecError(
            f"--output {run_dir}: cannot create the run folder ({exc.strerror})"
        ) from None

    from cluster.launch import fit  # imports Ray: only after every check has passed

    result = fit(spec, storage)
    if getattr(result, "error", None):
        raise result.error
    checkpoint = result.checkpoint
    with checkpoint.as_directory() as folder:  # from S3: a local download, removed after
        folder = Path(folder)
        storage.put_dir(folder / STUDENT_DIR, STUDENT_DIR)
        probe = torch.load(folder / PROBE_FILE)
        state = json.loads((folder / STATE_FILE).read_text())
        storage.write_text("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state["history"]))
        _, eval_texts = train_eval_texts(spec)
        report = build_report(
            spec,
            storage.uri,
            list(eval_texts["text"]),
            state,
            probe,
            f"s3://{checkpoint.path}" if is_s3_uri(storage.uri) else checkpoint.path,
            started,
            student_dir=folder / STUDENT_DIR,
        )
    storage.write_text("report.json", json.dumps(report, indent=2))
    return report
