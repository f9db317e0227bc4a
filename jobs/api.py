"""The Python API behind `import distill`: the same functions the CLI calls.

    import distill
    spec = distill.load_spec("examples/minilm.yaml", overrides=["training.steps=50"], smoke=True)
    report = distill.run(spec)

Bad input raises `distill.SpecError` (one line naming the field or file) before Ray starts;
nothing here prints or exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.cluster.sweep_spec import SweepSpec
from distill.core.spec import JobSpec
from distill.core.spec_loading import load_spec as _load_spec_file
from distill.core.spec_loading import load_spec_dict, override_fields
from distill.core.stages import smoke_pipeline


def load_spec(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    *,
    smoke: bool = False,
) -> JobSpec:
    """A validated job spec from a YAML file, a dict (as the YAML would hold) or the
    defaults (None: the offline quickstart), with `key=value` overrides as in `--set`."""
    if isinstance(source, dict):
        spec = load_spec_dict(source, overrides)
    else:
        spec = _load_spec_file(source, overrides)
    return smoke_pipeline(spec, override_fields(overrides)) if smoke else spec


def load_sweep(
    source: str | Path, overrides: list[str] | None = None, *, smoke: bool = False
) -> SweepSpec:
    """A validated sweep (base job spec + search space) from a YAML file."""
    from distill.cluster.sweep_spec import load_sweep as _load_sweep

    sweep = _load_sweep(source, overrides)
    if smoke:
        from distill.jobs.tune import smoke_sweep

        sweep = smoke_sweep(sweep, override_fields(overrides))
    return sweep


def run(
    spec: JobSpec | str | Path | dict | None = None,
    output: str | None = None,
    *,
    force: bool = False,
) -> dict:
    """Train, export and evaluate one job (all its stages) on Ray; the report as a dict.
    Re-running with the same output resumes from the latest intact checkpoint. Another
    writer's lease on the run folder raises SpecError; `force` takes it over."""
    from distill.jobs.run import run_job

    if not isinstance(spec, JobSpec):
        spec = load_spec(spec)
    return run_job(spec, output, force=force)


def tune(
    sweep: SweepSpec | str | Path,
    output: str | None = None,
    *,
    max_params: int | None = None,
    min_speedup: float | None = None,
    force: bool = False,
) -> dict:
    """Run a Ray Tune sweep over students; the sweep report (trials, Pareto front, choice).
    `force` takes over another writer's lease on the sweep folder."""
    from distill.jobs.flags import check_limit
    from distill.jobs.tune import run_sweep

    if not isinstance(sweep, SweepSpec):
        sweep = load_sweep(sweep)
    check_limit("max_params", max_params)
    check_limit("min_speedup", min_speedup)
    return run_sweep(sweep, output, max_params=max_params, min_speedup=min_speedup, force=force)


def report(location: str | Path, s3=None) -> dict:
    """The report of a finished run or sweep folder (local or `s3://`)."""
    from distill.jobs.run_folder import read_run_report

    return read_run_report(str(location), s3).report


def export(run_location: str | Path, out: str | Path, s3=None) -> dict:
    """Copy a run's student (or consolidate its newest intact checkpoint) into `out`."""
    from distill.jobs.runs import export_run

    return export_run(str(run_location), out, s3)
