"""The sweep file of `distill tune`: a base job spec plus a search space, search algorithm
and scheduler, validated by pydantic like the job spec.

    base: {teacher: ..., student: ..., data: ..., ...}     # or base: path/to/job.yaml
    space:
      student.layers: {grid: [2, 3, 4]}
      student.hidden: {choice: [192, 384]}
      student: {grid: [{hidden: 256, heads: 4}, {hidden: 384, heads: 6}]}   # joint values
      training.learning_rate: {loguniform: [1.0e-4, 1.0e-3]}
    search: {algorithm: grid | random | optuna, num_samples: 1, objectives: [quality, speedup]}
    scheduler: {kind: asha, grace_period: 100}

A space key is a dotted path into the job spec; a dict value deep-merges into that section,
so one grid entry can set several fields that must change together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from distill.core.spec import JobSpec, PositiveInt, Seed, SpecError, Strict, format_error
from distill.core.spec_loading import merge, nested, parse_overrides, read_yaml_mapping

# Every combination of the space's values is checked before a sweep starts: at most this many.
MAX_CHECKED = 5000
# Final per-trial metrics (from the trial's report) a searcher can optimise.
TRIAL_METRICS = {
    "quality": "max",  # the student's quality metric on the dev split (e.g. STS Spearman)
    "retention": "max",  # student quality / teacher quality
    "speedup": "max",  # student / teacher encode throughput, measured in the same process
    "params": "min",  # student parameters
}


class ParamSpec(Strict):
    """One dimension: exactly one of grid / choice (lists) or uniform / loguniform / randint
    ([low, high]; randint's high is exclusive)."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamSpec:
        given = [
            k
            for k in ("grid", "choice", "uniform", "loguniform", "randint")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})"
            )
        values = self.grid if self.grid is not None else self.choice
        if values is not None and not values:
            raise ValueError(f"{given[0]}: needs at least one value")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low {bounds[0]} must be below high {bounds[1]}")
        if self.randint is not None and self.randint[1] - self.randint[0] > MAX_CHECKED:
            raise ValueError(
                f"randint: {self.randint[1] - self.randint[0]} values; at most {MAX_CHECKED} "
                "(every value is checked before the sweep starts)"
            )
        return self

    @property
    def kind(self) -> str:
        return next(
            k
            for k in ("grid", "choice", "uniform", "loguniform", "randint")
            if getattr(self, k) is not None
        )

    @property
    def values(self) -> list[Any] | None:
        """The finite values of a grid/choice/randint dimension; None for continuous ones."""
        if self.randint is not None:
            return list(range(*self.randint))
        return self.grid if self.grid is not None else self.choice


class SearchSpec(Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    # grid: repeats of the whole grid; random/optuna: number of trials.
    num_samples: PositiveInt = 1
    # What the searcher optimises, from the trial's final report: one metric, or several for
    # Optuna's multi-objective search (its Pareto-aware NSGA-II sampler).
    objectives: list[Literal["quality", "retention", "speedup", "params"]] = ["quality"]
    seed: Seed = 0
    # grid: the order trials start in. `init_quality`: best first by each student's quality
    # before any training (`distill.jobs.sweep_order`). ASHA compares a trial only with the
    # trials that reached its rung before it, so a grid whose strongest students come last
    # (deeper, wider) lets every one of them through; best first, the rest stop early.
    order: Literal["as_written", "init_quality"] = "as_written"

    @model_validator(mode="after")
    def _objectives(self) -> SearchSpec:
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError(f"objectives: expected distinct metrics, got {self.objectives}")
        if len(self.objectives) > 1 and self.algorithm != "optuna":
            raise ValueError("objectives: several objectives need algorithm optuna")
        if self.order != "as_written" and self.algorithm != "grid":
            raise ValueError(f"order: {self.order} orders a grid; algorithm is {self.algorithm}")
        return self


class SchedulerSpec(Strict):
    """`asha` stops trials early on an in-training metric: `eval_quality` (STS Spearman on
    evaluation.sts_path, or accuracy for classification tasks) or `eval_loss`."""

    kind: Literal["fifo", "asha"] = "fifo"
    metric: Literal["eval_quality", "eval_loss"] = "eval_quality"
    grace_period: PositiveInt = 50  # training steps before a trial may be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0

    @property
    def mode(self) -> str:
        return "min" if self.metric == "eval_loss" else "max"


class ChoiceSpec(Strict):
    """Which trial's student the sweep exports: the best quality under these limits, or the
    knee of the quality/speedup Pareto front when none is set."""

    max_params: PositiveInt | None = None
    min_speedup: Annotated[float, Field(gt=0)] | None = None


class SweepSpec(Strict):
    base: dict = {}
    space: dict[str, ParamSpec]
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    choose: ChoiceSpec = ChoiceSpec()
    # None: as many as the cluster's CPUs/GPUs fit (each trial holds its Train workers).
    max_concurrent_trials: PositiveInt | None = None
    teacher_cache: bool = True

    def base_spec(self) -> JobSpec:
        """The base job spec, validated; a SpecError names `base.<field>`."""
        try:
            return JobSpec.model_validate(self.base)
        except ValidationError as err:
            raise SpecError(f"base.{format_error(err)}") from None

    @model_validator(mode="after")
    def _space(self) -> SweepSpec:
        if not self.space:
            raise ValueError("space: needs at least one dimension")
        for key, param in self.space.items():
            if key.split(".")[0] in ("teacher", "stages", "output", "scaling"):
                raise ValueError(
                    f"space.{key}: the search space may not change {key.split('.')[0]}"
                )
            if self.search.algorithm == "grid" and param.kind != "grid":
                raise ValueError(
                    f"space.{key}: algorithm grid takes only grid dimensions (got {param.kind})"
                )
            if self.search.algorithm == "optuna" and param.kind == "grid":
                raise ValueError(f"space.{key}: optuna samples; use choice instead of grid")
        if self.search.order == "init_quality" and not (self.base.get("evaluation") or {}).get(
            "sts_path"
        ):
            raise ValueError(
                "search.order: init_quality scores students on base.evaluation.sts_path, "
                "which is not set"
            )
        return self


# An ordered grid (`search.order`) is one Tune grid dimension whose values are whole trial
# points, in the order they run; a trial's config then holds its point under this key.
POINT = "_point"


def trial_params(config: dict) -> dict[str, Any]:
    """A trial's sweep values from its Tune config."""
    return dict(config[POINT]) if POINT in config else dict(config)


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """The base job spec (raw dict) with one trial's values merged in."""
    raw = base
    for key, value in params.items():
        raw = merge(raw, nested(key, value))
    return raw


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read a sweep YAML, apply `--set` overrides (paths into the sweep file, e.g.
    `base.training.steps=50` or `search.num_samples=4`), validate. `base` may name a job
    spec file, read relative to the sweep file."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep")
    if isinstance(raw.get("base"), str):
        base_path = (path.parent / raw["base"]).resolve()
        if not base_path.exists():
            raise SpecError(f"base: job spec {raw['base']} not found next to {path}")
        raw["base"] = read_yaml_mapping(base_path, "base")
    return validate_sweep(merge(raw, parse_overrides(overrides or [])))


def validate_sweep(raw: dict) -> SweepSpec:
    """A sweep given as a mapping (as the YAML holds it, `base` inline), base included."""
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_sweep_error(err)) from None
    sweep.base_spec()  # a bad base fails here, naming `base.<field>`
    return sweep


def _sweep_error(err: ValidationError) -> str:
    """Like the job spec's errors, but space keys are dotted paths (`space.student.layers`)
    and whole-sweep checks already name their field."""
    first = err.errors()[0]
    if first["type"] == "value_error" and not first["loc"]:
        return first["msg"].removeprefix("Value error, ")
    parts = [str(p) for p in first["loc"] if not str(p)[:1].isupper() and "[" not in str(p)]
    if parts and parts[0] == "space":
        message = format_error(err).partition(": ")[2]
        return f"{'.'.join(parts)}: {message}"
    return format_error(err)
