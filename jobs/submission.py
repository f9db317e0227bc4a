"""Submitting `distill` commands to a Ray cluster through the Ray Jobs API: check the input
here first (the job spec's schema and the same preflight as `distill run`, or a sweep's
every combination, without this machine's CPU/GPU count), so bad input fails in one line
before the cluster is contacted; then stage the job (`jobs/staging.py`) and send
`python -m distill.jobs.cli <command> ...` with its `runtime_env`
(`jobs/cluster_client.py`). Each function returns the submission id; printing it and
following the job is the CLI's part (`jobs/submit.py`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from distill.cluster.worker_env import worker_env
from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import load_spec, merge, parse_overrides
from distill.jobs import cluster_client
from distill.jobs.cluster_client import cluster_address
from distill.jobs.staging import (
    JOB_DIR,
    bundle_local_paths,
    new_working_dir,
    runtime_env,
)


def entrypoint(remote_argv: list[str], python: str = "python") -> str:
    """The shell command a submitted job runs: `python -m distill.jobs.cli ARGV...`."""
    return " ".join([shlex.quote(python), "-m", "distill.jobs.cli", *map(shlex.quote, remote_argv)])


def _output_check(output: str | None, spec: JobSpec, prefix: str = "") -> None:
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


def _run_dir(spec: JobSpec, output: str | None) -> str:
    return output or f"{spec.output.dir.rstrip('/')}/{spec.output.name}"


def _remote_flags(args: argparse.Namespace) -> list[str]:
    """`--smoke`, `--output` and `--force` (tune) as the remote command takes them."""
    flags = (["--smoke"] if args.smoke else []) + (["--output", args.output] if args.output else [])
    return flags + (["--force"] if getattr(args, "force", False) else [])


def validate(config: str | None, overrides: list[str], smoke: bool, output: str | None) -> JobSpec:
    """Load and preflight the spec here, without Ray; returns the spec."""
    import datasets

    from distill.core.spec_loading import override_fields
    from distill.core.stages import smoke_pipeline
    from distill.jobs.preflight import preflight_stages

    datasets.disable_progress_bars()  # a bar would split the one-line error
    spec = load_spec(config, overrides)
    if smoke:
        spec = smoke_pipeline(spec, override_fields(overrides))
    _output_check(output, spec)
    preflight_stages(spec, local_resources=False)
    return spec


def _raw_config(config: str | None, overrides: list[str]) -> dict:
    raw = yaml.safe_load(Path(config).read_text()) if config else {}
    return merge(raw or {}, parse_overrides(overrides))


def submit_command(
    args: argparse.Namespace,
    argv: list[str],
    files: list[str] = (),
    *,
    stage: Callable[[Path], None] | None = None,
    env: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Submit any distill command line (e.g. `["tune", "sweep.yaml", "--smoke"]`) to the
    cluster; `args` carries the flags of `add_submit_flags`. `files`: local files named in
    `argv`, copied under `job/` with argv pointing at the copies. `stage(working_dir)`:
    writes anything else the command needs into the staged working dir (under `job/`).
    Returns the submission id."""
    with tempfile.TemporaryDirectory(prefix="distill-submit-") as tmp:
        working_dir = new_working_dir(Path(tmp))
        remote = list(argv)
        for i, name in enumerate(files):
            if not Path(name).is_file():
                raise SpecError(f"{name}: file not found")
            target = f"{JOB_DIR}/{i}_{Path(name).name}"
            shutil.copy2(name, working_dir / target)
            remote = [target if a == name else a for a in remote]
        if stage is not None:
            stage(working_dir)
        return cluster_client.send_job(
            args.address,
            entrypoint(remote, args.python),
            runtime_env(working_dir, env or worker_env(JobSpec()), args),
            {"distill_command": argv[0] if argv else "", **(metadata or {})},
            args.job_id,
        )


def submit_job(args: argparse.Namespace) -> str:
    """`distill submit`: validate `args.config` locally, stage it with its relative files
    and submit `distill run` to the cluster. Returns the submission id."""
    cluster_address(args.address)  # no address: fail before the (slower) validation
    spec = validate(args.config, args.overrides, args.smoke, args.output)
    raw = _raw_config(args.config, args.overrides)

    def stage(working_dir: Path) -> None:
        # Relative paths are relative to where distill runs, as for `distill run`.
        bundled = bundle_local_paths(raw, working_dir, Path.cwd())
        config = working_dir / JOB_DIR / "config.yaml"
        config.write_text(yaml.safe_dump(bundled, sort_keys=False))

    metadata = {"distill_output": _run_dir(spec, args.output)}
    if args.config:
        metadata["distill_config"] = Path(args.config).name
    remote = ["run", f"{JOB_DIR}/config.yaml", *_remote_flags(args)]
    return submit_command(args, remote, stage=stage, env=worker_env(spec), metadata=metadata)


def submit_sweep(args: argparse.Namespace) -> str:
    """`distill tune SWEEP --submit`: check the sweep here (schema and every combination,
    without this machine's CPU count), stage it with its relative data, submit `distill tune`.
    Returns the submission id."""
    from distill.cluster.sweep_spec import load_sweep
    from distill.core.spec_loading import override_fields
    from distill.jobs.sweep_check import check_sweep
    from distill.jobs.tune import smoke_sweep

    cluster_address(args.address)
    sweep = load_sweep(args.sweep, args.overrides)
    if args.smoke:
        sweep = smoke_sweep(sweep, override_fields(args.overrides))
    base = sweep.base_spec()
    _output_check(args.output, base, "base.")
    import datasets

    datasets.disable_progress_bars()  # a bar would split the one-line error
    with _cluster_resources():
        check_sweep(sweep)
    raw = sweep.model_dump(mode="json", exclude_unset=True)

    def stage(working_dir: Path) -> None:
        staged = {**raw, "base": bundle_local_paths(raw["base"], working_dir, Path.cwd())}
        (working_dir / JOB_DIR / "sweep.yaml").write_text(yaml.safe_dump(staged, sort_keys=False))

    remote = ["tune", f"{JOB_DIR}/sweep.yaml", *_remote_flags(args)]  # --set merged into it
    for flag, value in (("--max-params", args.max_params), ("--min-speedup", args.min_speedup)):
        remote += [flag, str(value)] if value is not None else []
    return submit_command(
        args,
        remote,
        stage=stage,
        env=worker_env(base),
        metadata={
            "distill_output": _run_dir(base, args.output),
            "distill_config": Path(args.sweep).name,
        },
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
