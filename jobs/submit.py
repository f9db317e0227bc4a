"""The command line of a Ray cluster's jobs (wired in jobs/cli.py): send a `distill` job,
and watch it through the Ray Jobs API.

    distill submit CONFIG --address http://HEAD:8265 [--set key=value ...] [--follow]
    distill tune SWEEP --submit --address http://HEAD:8265 [--follow]
    distill status JOB | distill logs JOB [--follow] | distill stop JOB | distill jobs

The config is validated here first (schema and the same preflight as `distill run`, except
the local CPU/GPU count), so a bad config exits 2 before the cluster is contacted. The job
then runs `python -m distill.jobs.cli run ...` on the cluster in a `runtime_env` holding:

- `working_dir`: a small staged folder with the config (and `--set` overrides) merged into
  `job/config.yaml`, plus every *relative* local file or folder the config names (data,
  STS file, teacher folder), copied under `job/files/` and the paths rewritten. Absolute
  paths are kept: they must exist at the same path on every node (a shared filesystem).
- `py_modules`: this machine's `distill` package (`--code local`, the default), staged as
  one folder, so the cluster runs the code you validated; `--code installed` uses the
  cluster image's own install instead.
- `env_vars`: the workers' environment from `cluster.worker_env` (e.g.
  `DS_ACCELERATOR=cpu` without GPUs) plus `--env KEY=VALUE`; `pip` from `--pip`.

Checking and sending live in `jobs/submission.py`, staging in `jobs/staging.py`, the
cluster's address, auth token and client in `jobs/cluster_client.py` (the token is sent
only as an HTTP header: never printed, never put in the job's `runtime_env` or metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from distill.jobs.cluster_client import call, client, cluster_address
from distill.jobs.flags import add_overrides_flag
from distill.jobs.submission import submit_job, submit_sweep

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_address_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="Ray dashboard URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS)",
    )


def add_submit_flags(parser: argparse.ArgumentParser, *, with_submit: bool = False) -> None:
    """Flags that any command sent to a cluster shares (`submit`, and `tune --submit`)."""
    if with_submit:
        parser.add_argument(
            "--submit", action="store_true", help="run on the Ray cluster at --address"
        )
    add_address_flag(parser)
    parser.add_argument(
        "--code",
        choices=("local", "installed"),
        default="local",
        help="local: ship this checkout's packages (default); installed: the cluster's own",
    )
    parser.add_argument(
        "--pip", action="append", default=[], metavar="REQ", help="pip requirement for the job"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (never a secret: Ray shows it)",
    )
    parser.add_argument("--job-id", help="submission id (default: Ray picks one)")
    parser.add_argument(
        "--python", default="python", help="the cluster's Python executable (default: python)"
    )
    parser.add_argument("--follow", action="store_true", help="stream the logs until the job ends")


def add_parsers(sub) -> None:
    submit = sub.add_parser("submit", help="validate a job spec and run it on a Ray cluster")
    submit.add_argument("config", nargs="?", help="job spec YAML (none: the quickstart)")
    add_overrides_flag(submit, "spec", "training.steps=50")
    submit.add_argument("--output", help="run folder: s3://... or an absolute shared path")
    submit.add_argument("--smoke", action="store_true", help="the tiny version of the job")
    add_submit_flags(submit)
    for name, text in (
        ("status", "a submitted job's status"),
        ("logs", "a submitted job's logs"),
        ("stop", "stop a submitted job"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", help="submission id printed by `distill submit`")
        add_address_flag(cmd)
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="print the job's details")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="stream until the job ends")
        if name == "stop":
            cmd.add_argument("--wait", action="store_true", help="wait until it has stopped")
    jobs = sub.add_parser("jobs", help="list the cluster's jobs")
    add_address_flag(jobs)
    jobs.add_argument("--json", action="store_true")


def _submitted(job_id: str, args: argparse.Namespace) -> int:
    """Print the submission id (stdout) and how to follow it; with `--follow`, stream the
    logs and exit 0 only when the job succeeded."""
    url = cluster_address(args.address)
    print(job_id)
    print(
        f"submitted to {url}; follow with: distill logs {job_id} --follow --address {url}",
        file=sys.stderr,
    )
    return _follow_result(args, job_id) if args.follow else 0


def submit_cli(args: argparse.Namespace) -> int:
    return _submitted(submit_job(args), args)


def tune_submit_cli(args: argparse.Namespace) -> int:
    """`distill tune SWEEP --submit` (called by jobs/cli.py)."""
    return _submitted(submit_sweep(args), args)


def _follow_result(args, job_id: str) -> int:
    _stream_logs(args.address, job_id)
    status = _wait_terminal(args.address, job_id)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _details(address: str | None, job_id: str):
    c = client(address)
    return call(cluster_address(address), c.get_job_info, job_id, job=job_id)


def _wait_terminal(address: str | None, job_id: str, timeout: float | None = None) -> str:
    deadline = None if timeout is None else time.time() + timeout
    while True:
        status = str(_details(address, job_id).status.value)
        if status in _TERMINAL or (deadline is not None and time.time() > deadline):
            return status
        time.sleep(1)


def _stream_logs(address: str | None, job_id: str) -> None:
    c = client(address)
    url = cluster_address(address)
    _details(address, job_id)  # a missing job fails here, in one line

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    call(url, lambda: asyncio.run(tail()), job=job_id)


def _row(job) -> dict:
    meta = job.metadata or {}
    return {
        "job": job.submission_id or job.job_id,
        "status": str(job.status.value),
        "start": job.start_time,
        "end": job.end_time,
        "output": meta.get("distill_output"),
        "config": meta.get("distill_config"),
        "message": job.message,
        "entrypoint": job.entrypoint,
    }


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def _error_line(address: str | None, job_id: str) -> str | None:
    """The one-line `distill: error: ...` a failed job's driver printed last, if any."""
    c = client(address)
    logs = call(cluster_address(address), c.get_job_logs, job_id, job=job_id)
    errors = [ln for ln in logs.splitlines() if ln.startswith("distill: error: ")]
    return errors[-1].removeprefix("distill: error: ") if errors else None


def status_cli(args) -> int:
    row = _row(_details(args.address, args.job))
    if row["status"] == "FAILED":
        row["error"] = _error_line(args.address, args.job)
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(f"{row['job']}: {row['status']}")
    for key in ("config", "output", "error"):
        if row.get(key):
            print(f"  {key}: {row[key]}")
    if row["message"] and not row.get("error"):
        print(f"  message: {row['message'].strip().splitlines()[0]}")
    print(f"  started: {_when(row['start'])}  ended: {_when(row['end'])}")
    if row["output"] and row["status"] == "SUCCEEDED":
        print(f"  results: distill report {row['output']}")
    return 0


def logs_cli(args) -> int:
    if args.follow:
        _stream_logs(args.address, args.job)
        return 0
    c = client(args.address)
    print(call(cluster_address(args.address), c.get_job_logs, args.job, job=args.job), end="")
    return 0


def stop_cli(args) -> int:
    c = client(args.address)
    url = cluster_address(args.address)
    stopped = call(url, c.stop_job, args.job, job=args.job)
    if not stopped:
        print(f"{args.job}: not running ({_details(args.address, args.job).status.value})")
        return 0
    if args.wait:
        print(f"{args.job}: {_wait_terminal(args.address, args.job, timeout=120)}")
    else:
        print(f"{args.job}: stop requested")
    return 0


def jobs_cli(args) -> int:
    c = client(args.address)
    rows = [_row(j) for j in call(cluster_address(args.address), c.list_jobs)]
    rows.sort(key=lambda r: r["start"] or 0)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    table = [("job", "status", "started", "output")] + [
        (r["job"], r["status"], _when(r["start"]), r["output"] or r["entrypoint"][:60])
        for r in rows
    ]
    width = [max(len(row[i]) for row in table) for i in range(4)]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in table))
    return 0


COMMANDS = {
    "submit": submit_cli,
    "status": status_cli,
    "logs": logs_cli,
    "stop": stop_cli,
    "jobs": jobs_cli,
}
