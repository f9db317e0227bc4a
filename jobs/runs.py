"""`distill runs list LOCATION` and `distill export RUN --out DIR`, for run folders on local
disk or in S3 (`s3://bucket/prefix`).

    distill runs list s3://bucket/runs
    distill export s3://bucket/runs/quickstart --out ./student
    distill export runs/quickstart --out ./serving --format onnx --quantize int8

`export` downloads the run's finished `student/`; when there is none (the run was stopped
before its end) it takes the newest intact checkpoint and consolidates the DeepSpeed
shards of every rank into an fp32 student (cluster/consolidate.py). Both commands verify
checkpoints against their manifests (sizes and sha256) and pass over damaged ones with one
line naming the damaged file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from distill.cluster.pipeline import stage_dir
from distill.cluster.run_files import STATE_FILE, STUDENT_DIR, TRAIN_DIR
from distill.cluster.storage import Storage, StorageError
from distill.core.spec import JobSpec, SpecError, format_error
from distill.jobs.run_folder import (
    CONFIG_FILE,
    REPORT_FILE,
    DamagedFile,
    check_report,
    open_readable,
    read_json_file,
    read_yaml_file,
)

DAMAGED = "damaged"


def _newest_intact(run: Storage):
    """cluster.checkpoints.newest_intact of the run's Train folder, imported here: it
    brings pyarrow, which `distill --help` and the commands that never read a checkpoint
    should not pay for."""
    from distill.cluster.checkpoints import newest_intact

    return newest_intact(run, TRAIN_DIR)


def _quality(q: dict) -> str | None:
    if q.get("retention") is None or q.get("student") is None:
        return None
    return f"{q['metric']} {q['student']:.4g} ({q['retention']:.3g} of teacher)"


def _run_row(run: Storage) -> dict | None:
    """The row of one run folder, None when it is no run (no config.yaml). A damaged run
    (unreadable config or report) is a row with status `damaged` and its reason."""
    children = set(run.list())
    if CONFIG_FILE not in children:
        return None
    row = {"name": run.name, "uri": run.uri, "status": "no checkpoint", "steps": None}
    try:
        read_yaml_file(run, CONFIG_FILE)
        if REPORT_FILE in children:
            report = check_report(run, REPORT_FILE, read_json_file(run, REPORT_FILE))
            tr, sp = report["training"], report["speed"]
            row.update(
                status=report["run"].get("status", "completed"),
                steps=tr.get("steps"),
                final_loss=tr.get("final_loss"),
                quality=_quality(report["quality"]),
                speedup=sp.get("speedup"),
            )
            return row
        checkpoints = _newest_intact(run)
    except DamagedFile as exc:
        return {**row, "status": DAMAGED, "reason": f"{exc.relpath}: {exc.reason}"}
    except (StorageError, OSError) as exc:
        return {**row, "status": DAMAGED, "reason": f"cannot read the run ({exc})"}
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
    storage = open_readable(location, s3, "runs list")
    try:
        names = storage.list()
    except StorageError as exc:
        raise SpecError(f"runs list: {exc}") from None
    rows = []
    for name in names:
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
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in table]
    damaged = [r for r in rows if r["status"] == DAMAGED]
    if damaged:
        lines.append("")
        lines += [f"{r['name']}: damaged: {r['reason']}" for r in damaged]
    return "\n".join(lines)


def _restore_empty_module_dirs(folder: Path) -> None:
    """Object stores keep no empty folders; sentence-transformers expects every module path
    in modules.json (e.g. an empty `2_Normalize/`) to exist."""
    modules = folder / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("path"):
                (folder / module["path"]).mkdir(parents=True, exist_ok=True)


def _spec_file(run: Storage, relpath: str) -> JobSpec:
    """A resolved spec the run wrote (its `config.yaml`, a stage's); DamagedFile if it is
    unreadable or no longer a valid spec."""
    raw = read_yaml_file(run, relpath)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise DamagedFile(run, relpath, f"not a valid job spec ({format_error(err)})") from None


def _checkpoint_spec(run: Storage, checkpoint: str) -> JobSpec:
    """The resolved spec of the stage a checkpoint belongs to: the run's config.yaml, or
    in a pipeline `stages/<stage>/config.yaml` of the stage its train_state.json names."""
    spec = _spec_file(run, CONFIG_FILE)
    if not spec.stages:
        return spec
    state = read_json_file(run, f"{checkpoint}/{STATE_FILE}")
    config = f"{stage_dir(state.get('stage', spec.stages[-1].name))}/{CONFIG_FILE}"
    if not run.exists(config):
        raise SpecError(f"export: {run.uri}: {config} is missing")
    return _spec_file(run, config)


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """`out` can become the export: an empty folder, or a path whose nearest existing
    parent is a writable folder. Checked before anything is downloaded or written."""
    if out.exists():
        if not out.is_dir():
            raise SpecError(f"{flag}: {out} is a file, expected a folder")
        if any(out.iterdir()):
            raise SpecError(f"{flag}: {out} is not empty")
        parent = out
    else:
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise SpecError(f"{flag}: cannot create {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"{flag}: cannot write into {parent} (permission denied)")


def export_run(run_uri: str, out: str | Path, s3=None) -> dict:
    """Put the run's student into `out` (created; must not hold files). Returns where it
    came from: {"source": "student" | "checkpoint" | "consolidated", ...}."""
    run = open_readable(run_uri, s3, "export")
    out = Path(out)
    check_out_folder(out)
    try:
        return _export(run, out)
    except StorageError as exc:  # a read the first check could not foresee (access, network)
        raise SpecError(f"export: {exc}") from None


def _export(run: Storage, out: Path) -> dict:
    if run.dir_complete(STUDENT_DIR):
        run.get_dir(STUDENT_DIR, out)
        _restore_empty_module_dirs(out)
        return {"source": "student", "run": run.uri}
    if not run.exists(CONFIG_FILE):
        raise SpecError(f"export: {run.uri} is not a run folder (no {CONFIG_FILE})")
    checkpoints = _newest_intact(run)
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

    spec = _checkpoint_spec(run, newest["path"])  # before DeepSpeed and any download
    from distill.cluster.consolidate import export_from_checkpoint  # imports DeepSpeed

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
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="list")
    listing = runs_sub.add_parser("list", help="runs with status and headline metrics")
    listing.add_argument("location", help="folder or s3://bucket/prefix holding run folders")
    listing.add_argument("--json", action="store_true", help="print JSON rows")
    export = sub.add_parser("export", help="download (or consolidate) a run's student")
    export.add_argument("run", help="run folder or s3://bucket/prefix/RUN")
    export.add_argument("--out", required=True, help="local folder for the student")
    export.add_argument(
        "--format",
        choices=("hf", "onnx"),
        default="hf",
        help="hf: the Hugging Face / sentence-transformers folder; onnx: also onnx/model.onnx "
        "(encoders), checked against PyTorch",
    )
    export.add_argument(
        "--quantize", choices=("int8",), help="with --format onnx: also onnx/model_int8.onnx"
    )
    for parser in (listing, export):
        add_s3_flags(parser)


def add_s3_flags(parser) -> None:
    parser.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)"
    )
    parser.add_argument("--region", help="S3 region (default: the AWS chain's)")
    parser.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")


def s3_options(args):
    """The S3 connection flags as an `S3Spec`; a bad value is a SpecError naming its flag."""
    from distill.core.spec import S3Spec

    try:
        return S3Spec(
            endpoint_url=getattr(args, "endpoint_url", None),
            region=getattr(args, "region", None),
            addressing_style=getattr(args, "addressing_style", "auto"),
        )
    except ValidationError as err:
        field, _, message = format_error(err).partition(": ")
        raise SpecError(f"--{field.replace('_', '-')}: {message}") from None


def runs_command(args) -> int:
    rows = list_runs(args.location, s3_options(args))
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def export_command(args) -> int:
    fmt = getattr(args, "format", "hf")
    quantize = getattr(args, "quantize", None)
    if quantize and fmt != "onnx":
        raise SpecError("--quantize: goes with --format onnx")
    done = export_run(args.run, args.out, s3_options(args))
    where = {"student": "the run's student/", "checkpoint": "the final checkpoint"}.get(
        done["source"], f"checkpoint {done.get('checkpoint')} (ZeRO shards consolidated to fp32)"
    )
    print(f"exported the student of {args.run} from {where} to {args.out}")
    if fmt == "onnx":
        _export_onnx(args, Path(args.out), quantize == "int8")
    return 0


def _export_onnx(args, out: Path, int8: bool) -> None:
    """`--format onnx`: the ONNX graph(s) next to the exported student, checked, and the
    model card (when the run has a report) saying how to load them."""
    from distill.core.onnx_export import CHECK_TEXTS
    from distill.jobs.serving import export_onnx_folder

    run = open_readable(args.run, s3_options(args), "export")
    spec = _spec_file(run, CONFIG_FILE)
    check = export_onnx_folder(out, spec, CHECK_TEXTS, int8)
    line = (
        f"onnx: {out}/onnx/model.onnx (max abs diff to PyTorch {check['fp32_max_abs_diff']:.2g}, "
        f"tolerance {check['fp32_tolerance']:g})"
    )
    if int8:
        line += (
            f"; {out}/onnx/model_int8.onnx (mean cosine to fp32 {check['int8_mean_cosine']:.4f}, "
            f"at least {check['int8_min_mean_cosine']})"
        )
    print(line)
    if run.exists(REPORT_FILE):
        from distill.jobs.model_card import write_model_card

        write_model_card(out, read_json_file(run, REPORT_FILE), spec)
