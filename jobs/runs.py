"""`distill runs list LOCATION` and `distill export RUN --out DIR`, for run folders on local
disk or in S3 (`s3://bucket/prefix`).

    distill runs list s3://bucket/runs
    distill export s3://bucket/runs/quickstart --out ./student

`export` downloads the run's finished `student/`; when there is none (the run was stopped
before its end) it takes the newest intact checkpoint and consolidates the DeepSpeed
shards of every rank into an fp32 student (cluster/consolidate.py). Both commands verify
checkpoints against their manifests (sizes and sha256) and pass over damaged ones with one
line naming the damaged file.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from distill.cluster.checkpoints import newest_intact
from distill.cluster.pipeline import stage_dir
from distill.cluster.run_files import STATE_FILE, STUDENT_DIR, TRAIN_DIR
from distill.cluster.storage import Storage, StorageError, open_storage
from distill.core.spec import JobSpec, SpecError

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"


def _open(uri: str, s3, what: str) -> Storage:
    try:
        storage = open_storage(uri, s3)
        storage.check_readable()
        return storage
    except StorageError as exc:
        raise SpecError(f"{what}: {exc}") from None


def _run_row(run: Storage) -> dict | None:
    children = set(run.list())
    if CONFIG_FILE not in children:
        return None
    row = {"name": run.name, "uri": run.uri, "status": "no checkpoint", "steps": None}
    if REPORT_FILE in children:
        report = json.loads(run.read_text(REPORT_FILE))
        tr, q, sp = report["training"], report["quality"], report["speed"]
        row.update(
            status=report["run"].get("status", "completed"),
            steps=tr.get("steps"),
            final_loss=tr.get("final_loss"),
            quality=f"{q['metric']} {q['student']:.4g} ({q['retention']:.3g} of teacher)"
            if q.get("retention") is not None
            else None,
            speedup=sp.get("speedup"),
        )
        return row
    checkpoints = newest_intact(run, TRAIN_DIR)
    notice = checkpoints.notice(
        "showing", none_left="the run is listed as damaged", where=f"{run.name}/"
    )
    if notice:
        print(notice, file=sys.stderr, flush=True)
        checkpoint, problem = checkpoints.damaged[0]
        row.update(status="damaged checkpoint", damaged=f"{checkpoint['path']}: {problem}")
    if checkpoints.intact:
        row.update(status="stopped (checkpoint)", steps=checkpoints.intact["step"])
    return row


def list_runs(location: str, s3=None) -> list[dict]:
    """One row per run folder directly under `location` (those holding a config.yaml)."""
    storage = _open(location, s3, "runs list")
    rows = []
    for name in storage.list():
        if name.startswith("."):
            continue
        row = _run_row(storage.child(name))
        if row is not None:
            rows.append(row)
    return rows


def format_runs(rows: list[dict]) -> str:
    if not rows:
        return "no runs"
    header = ("run", "status", "steps", "final loss", "quality", "speed-up")
    table = [header] + [
        (
            r["name"],
            r["status"],
            "-" if r["steps"] is None else str(r["steps"]),
            f"{r['final_loss']:.4g}" if r.get("final_loss") is not None else "-",
            r.get("quality") or "-",
            f"{r['speedup']:.3g}x" if r.get("speedup") is not None else "-",
        )
        for r in rows
    ]
    width = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in table)


def _restore_empty_module_dirs(folder: Path) -> None:
    """Object stores keep no empty folders; sentence-transformers expects every module path
    in modules.json (e.g. an empty `2_Normalize/`) to exist."""
    modules = folder / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("path"):
                (folder / module["path"]).mkdir(parents=True, exist_ok=True)


def _checkpoint_spec(run: Storage, checkpoint: str) -> JobSpec:
    """The resolved spec of the stage a checkpoint belongs to: the run's config.yaml, or
    in a pipeline `stages/<stage>/config.yaml` of the stage its train_state.json names."""
    spec = JobSpec.model_validate(yaml.safe_load(run.read_text(CONFIG_FILE)))
    if not spec.stages:
        return spec
    state = json.loads(run.read_text(f"{checkpoint}/{STATE_FILE}"))
    config = f"{stage_dir(state.get('stage', spec.stages[-1].name))}/{CONFIG_FILE}"
    if not run.exists(config):
        raise SpecError(f"export: {run.uri}: {config} is missing")
    return JobSpec.model_validate(yaml.safe_load(run.read_text(config)))


def export_run(run_uri: str, out: str | Path, s3=None) -> dict:
    """Put the run's student into `out` (created; must not hold files). Returns where it
    came from: {"source": "student" | "checkpoint" | "consolidated", ...}."""
    run = _open(run_uri, s3, "export")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"--out: {out} is not empty")
    if run.dir_complete(STUDENT_DIR):
        run.get_dir(STUDENT_DIR, out)
        _restore_empty_module_dirs(out)
        return {"source": "student", "run": run.uri}
    if not run.exists(CONFIG_FILE):
        raise SpecError(f"export: {run.uri} is not a run folder (no {CONFIG_FILE})")
    checkpoints = newest_intact(run, TRAIN_DIR)
    newest = checkpoints.intact
    if newest is None:
        damaged = "".join(
            f" ({checkpoint['path']} is damaged: {problem})"
            for checkpoint, problem in checkpoints.damaged[:1]
        )
        raise SpecError(f"export: {run.uri} has no student/ and no intact checkpoint{damaged}")
    notice = checkpoints.notice("exporting from", none_left="")
    if notice:
        print(notice, file=sys.stderr, flush=True)
    files = run.list_files(newest["path"])
    if any(f.startswith(f"{STUDENT_DIR}/") for f in files):  # the final one carries the export
        run.get_dir(f"{newest['path']}/{STUDENT_DIR}", out)
        _restore_empty_module_dirs(out)
        return {"source": "checkpoint", "checkpoint": newest["name"], "step": newest["step"]}

    from distill.cluster.consolidate import export_from_checkpoint  # imports DeepSpeed

    spec = _checkpoint_spec(run, newest["path"])
    with tempfile.TemporaryDirectory(prefix="distill-export-") as tmp:
        run.get_dir(newest["path"], tmp)
        staging = Path(tmp) / "export"
        export_from_checkpoint(tmp, spec, staging)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, out, dirs_exist_ok=True)
    return {"source": "consolidated", "checkpoint": newest["name"], "step": newest["step"]}


# -- command line (wired in jobs/cli.py) -------------------------------------------------------


def add_parsers(sub) -> None:
    """`runs list` and `export` subcommands, with the S3 connection flags."""
    runs = sub.add_parser("runs", help="list runs under a folder or s3://bucket/prefix")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = runs_sub.add_parser("list", help="runs with status and headline metrics")
    listing.add_argument("location", help="folder or s3://bucket/prefix holding run folders")
    listing.add_argument("--json", action="store_true", help="print JSON rows")
    export = sub.add_parser("export", help="download (or consolidate) a run's student")
    export.add_argument("run", help="run folder or s3://bucket/prefix/RUN")
    export.add_argument("--out", required=True, help="local folder for the student")
    for parser in (listing, export):
        add_s3_flags(parser)


def add_s3_flags(parser) -> None:
    parser.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)"
    )
    parser.add_argument("--region", help="S3 region (default: the AWS chain's)")
    parser.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")


def s3_options(args):
    from distill.core.spec import S3Spec

    return S3Spec(
        endpoint_url=getattr(args, "endpoint_url", None),
        region=getattr(args, "region", None),
        addressing_style=getattr(args, "addressing_style", "auto"),
    )


def runs_command(args) -> int:
    rows = list_runs(args.location, s3_options(args))
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def export_command(args) -> int:
    done = export_run(args.run, args.out, s3_options(args))
    where = {"student": "the run's student/", "checkpoint": "the final checkpoint"}.get(
        done["source"], f"checkpoint {done.get('checkpoint')} (ZeRO shards consolidated to fp32)"
    )
    print(f"exported the student of {args.run} from {where} to {args.out}")
    return 0
