"""Send `distill` jobs to a Ray cluster through the Ray Jobs API, and watch them.

    distill submit CONFIG --address http://HEAD:8265 [--set key=value ...] [--follow]
    distill status JOB | distill logs JOB [--follow] | distill stop JOB | distill jobs

The config is validated here first (schema and the same preflight as `distill run`, except
the local CPU/GPU count), so a bad config exits 2 before the cluster is contacted. The job
then runs `python -m distill.jobs.cli run ...` on the cluster in a `runtime_env` holding:

- `working_dir`: a small staged folder with the config (and `--set` overrides) merged into
  `job/config.yaml`, plus every *relative* local file or folder the config names (data,
  STS file, teacher folder), copied under `job/files/` and the paths rewritten. Absolute
  paths are kept: they must exist at the same path on every node (a shared filesystem).
- `py_modules`: this machine's `jobs`, `cluster` and `distill_core` (`--code local`, the
  default), so the cluster runs the code you validated; `--code installed` uses the
  cluster image's own install instead.
- `env_vars`: the workers' environment from `cluster.worker_env` (e.g.
  `DS_ACCELERATOR=cpu` without GPUs) plus `--env KEY=VALUE`; `pip` from `--pip`.

Authentication (Ray token auth, `RAY_AUTH_MODE=token` on the cluster): the token comes from
`RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` (Ray's own
order), and is sent only as an HTTP `Authorization` header. It is never
printed, never put in the job's `runtime_env` or metadata, and never written to the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from distill.cluster.worker_env import JOB_MARKER, SUBMITTED_JOB_ENV
from distill.core.spec import (
    SECRET_KEY,
    SpecError,
    load_spec,
    merge,
    parse_overrides,
)
from distill.jobs.flags import add_overrides_flag

DASHBOARD_PORT = 8265
BUNDLE_LIMIT_BYTES = 100 * 2**20  # Ray caps a working_dir package at a few hundred MiB
JOB_DIR = "job"
# Set on the cluster: relative paths resolve inside the job's working_dir on every node.
_PACKAGES = ("jobs", "cluster", "distill_core")
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# -- address and token --------------------------------------------------------------------


def cluster_address(address: str | None) -> str:
    """`--address`, else `RAY_ADDRESS`; a bare host gets the dashboard's http port."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SpecError(
            "--address: no cluster given; pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    if "://" not in address and address != "auto":
        host = address.split(":")[0]
        address = f"http://{host}:{DASHBOARD_PORT}" if address.count(":") == 0 else address
        address = address if "://" in address else f"http://{address}"
    return address.rstrip("/")


def auth_token() -> str | None:
    """The cluster token, found where Ray itself looks: `RAY_AUTH_TOKEN`, the file named by
    `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token` (skipped when `RAY_AUTH_MODE=disabled`).
    None when there is none. Never log the value."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise SpecError(f"RAY_AUTH_TOKEN_PATH: cannot read {path} ({exc.strerror})") from None
        if not token:
            raise SpecError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and default.is_file():
        return default.read_text().strip() or None
    return None


def client(address: str | None):
    """A `JobSubmissionClient` for the cluster; connection and auth failures are SpecErrors."""
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in ("ray.dashboard", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)  # per-package upload chatter
    url = cluster_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise SpecError(_auth_message(url, exc, token is not None)) from None
    except (ConnectionError, OSError) as exc:
        raise SpecError(
            f"--address {url}: cannot reach the Ray dashboard ({type(exc).__name__})"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise SpecError(f"--address {url}: {_first_line(exc)}") from None


def _auth_message(url: str, exc: Exception, had_token: bool) -> str:
    if had_token or "403" in str(exc) or "Forbidden" in str(exc):
        return (
            f"--address {url}: the cluster rejected the auth token (wrong token for this cluster)"
        )
    return (
        f"--address {url}: the cluster requires an auth token (RAY_AUTH_MODE=token); "
        "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _call(address: str, fn, *args, job: str | None = None):
    """Run one client call; a missing job or an auth failure becomes a one-line SpecError."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as exc:
        raise SpecError(_auth_message(address, exc, auth_token() is not None)) from None
    except RuntimeError as exc:
        if job and ("404" in str(exc) or "does not exist" in str(exc)):
            raise SpecError(f"{job}: no such job on {address}") from None
        raise SpecError(f"--address {address}: {_first_line(exc)}") from None
    except (ConnectionError, OSError) as exc:
        raise SpecError(
            f"--address {address}: cannot reach the Ray dashboard ({type(exc).__name__})"
        ) from None


# -- staging the job --------------------------------------------------------------------------


def _path_fields(raw: dict) -> list[tuple[list, str]]:
    """(container, key) of every config value that may name a local file or folder."""
    found = []

    def job_like(section: dict) -> None:
        teacher = section.get("teacher")
        if isinstance(teacher, dict) and isinstance(teacher.get("name"), str):
            found.append((teacher, "name"))
        data = section.get("data")
        if isinstance(data, dict):
            train = data.get("train")
            for source in train if isinstance(train, list) else [train]:
                if isinstance(source, dict) and isinstance(source.get("path"), str):
                    found.append((source, "path"))
            if isinstance(data.get("eval"), dict) and isinstance(data["eval"].get("path"), str):
                found.append((data["eval"], "path"))
        evaluation = section.get("evaluation")
        if isinstance(evaluation, dict) and isinstance(evaluation.get("sts_path"), str):
            found.append((evaluation, "sts_path"))

    job_like(raw)
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict):
            job_like(stage)
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bundle_local_paths(raw: dict, files_dir: Path, base: Path) -> dict[str, str]:
    """Copy every relative local path the config names into `files_dir` and point the config
    at the copy (relative to the working dir). Returns {original: staged}."""
    staged: dict[str, str] = {}
    total = 0
    for container, key in _path_fields(raw):
        value = container[key]
        if os.path.isabs(value) or value.startswith(("~", "builtin:", "s3://", "stage:")):
            continue
        local = (base / value).resolve()
        if not local.exists():
            continue  # a hub name (teacher or dataset); preflight checked the rest
        if value not in staged:
            total += _size(local)
            if total > BUNDLE_LIMIT_BYTES:
                raise SpecError(
                    f"{key}: local files named by the config exceed "
                    f"{BUNDLE_LIMIT_BYTES // 2**20} MiB; put {value} on storage every node "
                    "mounts and give its absolute path"
                )
            target = files_dir / f"{len(staged)}_{local.name}"
            if local.is_dir():
                shutil.copytree(local, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, target)
            staged[value] = f"{JOB_DIR}/{files_dir.name}/{target.name}"
        container[key] = staged[value]
    return staged


def _package_dirs() -> list[str]:
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in _PACKAGES]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--env {pair.split('=')[0]!r}: expected KEY=VALUE")
        if SECRET_KEY.search(key) or key.startswith(("RAY_AUTH", "AWS_SECRET", "AWS_SESSION")):
            # runtime_env is stored with the job and shown by the dashboard to anyone.
            raise SpecError(
                f"--env {key}: looks like a secret; give it to the cluster's nodes "
                "(a Kubernetes Secret, an instance profile), never to the job"
            )
        env[key] = value
    return env


def runtime_env(staging: Path, worker_env: dict[str, str], args: argparse.Namespace) -> dict:
    """The Ray `runtime_env` of a submitted job (no secrets: Ray stores and shows it)."""
    env = {**worker_env, SUBMITTED_JOB_ENV: "1", **parse_env(args.env)}
    renv: dict = {"working_dir": str(staging), "env_vars": env}
    if args.code == "local":
        renv["py_modules"] = _package_dirs()
    if args.pip:
        renv["pip"] = list(args.pip)
    return renv


def _output_check(output: str | None, spec, prefix: str = "") -> None:
    """A submitted job's working dir is temporary and on one node: results need storage
    that outlives it and that every node reaches."""
    where = output or spec.output.dir
    field = "--output" if output else f"{prefix}output.dir"
    if where.startswith("s3://") or os.path.isabs(where):
        return
    raise SpecError(
        f"{field}: {where!r} is relative; a submitted job's working dir is temporary, so "
        "use s3://bucket/prefix or an absolute path on storage every node mounts"
    )


def validate(config: str | None, overrides: list[str], smoke: bool, output: str | None):
    """Load and preflight the spec here, without Ray; returns the spec."""
    import datasets

    from distill.core.stages import smoke_pipeline
    from distill.jobs.preflight import preflight_stages

    datasets.disable_progress_bars()  # a bar would split the one-line error
    spec = load_spec(config, overrides)
    if smoke:
        spec = smoke_pipeline(spec)
    _output_check(output, spec)
    preflight_stages(spec, local_resources=False)
    return spec


def _raw_config(config: str | None, overrides: list[str]) -> dict:
    raw = yaml.safe_load(Path(config).read_text()) if config else {}
    return merge(raw or {}, parse_overrides(overrides))


def _submit(address: str, entrypoint: str, renv: dict, metadata: dict, job_id: str | None) -> str:
    c = client(address)
    url = cluster_address(address)
    try:
        return _call(
            url,
            lambda: c.submit_job(
                entrypoint=entrypoint,
                runtime_env=renv,
                metadata=metadata,
                submission_id=job_id,
            ),
        )
    except ValueError as exc:  # runtime_env rejected by Ray's own validation
        raise SpecError(f"runtime_env: {_first_line(exc)}") from None


def submit_job(args: argparse.Namespace) -> str:
    """Validate `args.config` locally, stage it and submit `distill run` to the cluster."""
    cluster_address(args.address)  # no address: fail before the (slower) validation
    spec = validate(args.config, args.overrides, args.smoke, args.output)
    from distill.cluster.worker_env import worker_env

    with tempfile.TemporaryDirectory(prefix="distill-submit-") as tmp:
        staging = Path(tmp)
        (staging / JOB_DIR).mkdir()
        (staging / JOB_MARKER).write_text("")
        raw = _raw_config(args.config, args.overrides)
        # Relative paths are relative to where distill runs, as for `distill run`.
        bundle_local_paths(raw, staging / JOB_DIR / "files", Path.cwd())
        (staging / JOB_DIR / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        remote = ["run", f"{JOB_DIR}/config.yaml"]
        remote += ["--smoke"] if args.smoke else []
        remote += ["--output", args.output] if args.output else []
        run_dir = args.output or f"{spec.output.dir.rstrip('/')}/{spec.output.name}"
        metadata = {"distill_command": "run", "distill_output": run_dir}
        if args.config:
            metadata["distill_config"] = Path(args.config).name
        return _submit(
            args.address,
            entrypoint(remote, args.python),
            runtime_env(staging, worker_env(spec), args),
            metadata,
            args.job_id,
        )


def entrypoint(remote_argv: list[str], python: str = "python") -> str:
    return " ".join([shlex.quote(python), "-m", "distill.jobs.cli", *map(shlex.quote, remote_argv)])


def submit_command(
    args: argparse.Namespace,
    argv: list[str],
    files: list[str] = (),
    *,
    stage=None,
    env: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Submit any distill command line (e.g. `["tune", "sweep.yaml", "--smoke"]`) to the
    cluster; `args` carries the flags of `add_submit_flags`. `files`: local files named in
    `argv`, copied under `job/` with argv pointing at the copies. `stage(job_dir)`: writes
    anything else the command needs into the staged `job/` folder."""
    from distill.cluster.worker_env import worker_env
    from distill.core.spec import JobSpec

    with tempfile.TemporaryDirectory(prefix="distill-submit-") as tmp:
        staging = Path(tmp)
        (staging / JOB_DIR).mkdir()
        (staging / JOB_MARKER).write_text("")
        remote = list(argv)
        for i, name in enumerate(files):
            if not Path(name).is_file():
                raise SpecError(f"{name}: file not found")
            target = f"{JOB_DIR}/{i}_{Path(name).name}"
            shutil.copy2(name, staging / target)
            remote = [target if a == name else a for a in remote]
        if stage is not None:
            stage(staging / JOB_DIR)
        job_id = _submit(
            args.address,
            entrypoint(remote, args.python),
            runtime_env(staging, env or worker_env(JobSpec()), args),
            {"distill_command": argv[0] if argv else "", **(metadata or {})},
            args.job_id,
        )
    _announce(job_id, args)
    return _follow_result(args, job_id) if args.follow else 0


def submit_sweep(args: argparse.Namespace) -> int:
    """`distill tune SWEEP --submit`: check the sweep here (schema and every combination,
    without this machine's CPU count), stage it with its relative data, submit `distill tune`."""
    from distill.cluster.sweep_spec import load_sweep
    from distill.cluster.worker_env import worker_env
    from distill.core.spec import JobSpec
    from distill.jobs.sweep_check import check_sweep
    from distill.jobs.tune import smoke_sweep

    cluster_address(args.address)
    sweep = load_sweep(args.sweep, args.overrides)
    if args.smoke:
        sweep = smoke_sweep(sweep)
    base = JobSpec.model_validate(sweep.base)
    _output_check(args.output, base, "base.")
    import datasets

    datasets.disable_progress_bars()  # a bar would split the one-line error
    with _cluster_resources():
        check_sweep(sweep)
    raw = sweep.model_dump(mode="json", exclude_unset=True)

    def stage(job_dir: Path) -> None:
        bundle_local_paths(raw["base"], job_dir / "files", Path.cwd())
        (job_dir / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    remote = ["tune", f"{JOB_DIR}/sweep.yaml"]  # --set overrides are merged into it
    remote += ["--smoke"] if args.smoke else []
    remote += ["--output", args.output] if args.output else []
    for flag, value in (("--max-params", args.max_params), ("--min-speedup", args.min_speedup)):
        remote += [flag, str(value)] if value is not None else []
    run_dir = args.output or f"{base.output.dir.rstrip('/')}/{base.output.name}"
    return submit_command(
        args,
        remote,
        stage=stage,
        env=worker_env(base),
        metadata={"distill_output": run_dir, "distill_config": Path(args.sweep).name},
    )


class _cluster_resources:
    """Inside: preflight skips this machine's CPU/GPU count (the job runs on the cluster);
    the sweep check reads the same `RAY_ADDRESS` switch as `distill run` on a cluster."""

    def __enter__(self) -> None:
        self._old = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = self._old or "submit"

    def __exit__(self, *exc) -> None:
        if self._old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = self._old


# -- command line (wired in jobs/cli.py) -----------------------------------------------------


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


def _announce(job_id: str, args) -> None:
    url = cluster_address(args.address)
    print(job_id)
    print(
        f"submitted to {url}; follow with: distill logs {job_id} --follow --address {url}",
        file=sys.stderr,
    )


def submit_cli(args: argparse.Namespace) -> int:
    job_id = submit_job(args)
    _announce(job_id, args)
    return _follow_result(args, job_id) if args.follow else 0


def _follow_result(args, job_id: str) -> int:
    _stream_logs(args.address, job_id)
    status = _wait_terminal(args.address, job_id)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _details(address: str | None, job_id: str):
    c = client(address)
    return _call(cluster_address(address), c.get_job_info, job_id, job=job_id)


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

    _call(url, lambda: asyncio.run(tail()), job=job_id)


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
    logs = _call(cluster_address(address), c.get_job_logs, job_id, job=job_id)
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
    print(_call(cluster_address(args.address), c.get_job_logs, args.job, job=args.job), end="")
    return 0


def stop_cli(args) -> int:
    c = client(args.address)
    url = cluster_address(args.address)
    stopped = _call(url, c.stop_job, args.job, job=args.job)
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
    rows = [_row(j) for j in _call(cluster_address(args.address), c.list_jobs)]
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
