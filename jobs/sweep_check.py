"""Check a sweep before anything launches: every combination of the space's values must
make a valid job (heads dividing hidden, relation heads dividing widths, layer maps that
fit, ...). A combination that can never run is an error naming it, not a failed trial.

Discrete dimensions contribute all their values, continuous ones both bounds. The first
combination is checked in full, data included; the others without re-reading the data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pydantic import ValidationError

from distill.cluster.sweep_spec import MAX_CHECKED, SweepSpec, apply_params
from distill.core.named_files import absolute_paths
from distill.core.spec import JobSpec, SpecError, format_error
from distill.core.stages import Stage
from distill.jobs.preflight import preflight_stages


@dataclass(frozen=True)
class CheckedSweep:
    base: dict  # the base job spec as raw JSON, local paths made absolute
    combinations: list[tuple[dict, Stage]]  # (values, the resolved single stage)


def _check_values(sweep: SweepSpec) -> dict[str, list]:
    values = {}
    for key, p in sweep.space.items():
        finite = p.values
        values[key] = finite if finite is not None else list(p.uniform or p.loguniform)
    return values


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def check_sweep(sweep: SweepSpec) -> CheckedSweep:
    """Validate the base spec and every combination; raise one `SpecError` line naming the
    first invalid combination and how many there are."""
    base_spec = sweep.base_spec()
    # Only paths are resolved: student dims stay unset so each trial's values resolve them.
    base = absolute_paths(base_spec).model_dump(mode="json")
    values = _check_values(sweep)
    total = 1
    for v in values.values():
        total *= len(v)
    if total > MAX_CHECKED:
        raise SpecError(f"space: {total} combinations to check; at most {MAX_CHECKED}")
    checked, invalid = [], []
    for combo in itertools.product(*values.values()):
        params = dict(zip(values, combo))
        try:
            spec = JobSpec.model_validate(apply_params(base, params))
            stages = preflight_stages(spec, check_data=not checked)
        except SpecError as exc:
            invalid.append((params, str(exc)))
            continue
        except ValidationError as exc:
            invalid.append((params, format_error(exc)))
            continue
        if len(stages) != 1:
            raise SpecError("base.stages: a sweep searches single-stage jobs")
        checked.append((params, stages[0]))
    if invalid:
        params, reason = invalid[0]
        raise SpecError(
            f"space: {len(invalid)} of {total} combinations can never run, e.g. "
            f"{_describe(params)} -> {reason}"
        )
    return CheckedSweep(base, checked)
