"""`distill tune`: search student depth and width with Ray Tune, distilling every trial.

distill tune SWEEP.yaml [--set key=value ...] [--output DIR] [--smoke]
                        [--max-params N] [--min-speedup X]

Order: validate the sweep and every combination of its space (no Ray yet), probe storage,
find or build the teacher-output cache, run (or resume) the Tune experiment, then write
`sweep_report.json`, `pareto.png` and the chosen student under the sweep folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from distill.cluster.storage import Storage
from distill.cluster.sweep_spec import SweepSpec, apply_params, trial_params
from distill.cluster.tracking import with_tracking
from distill.core.smoke import SmokePlan, apply_smoke, plan_changes, smoke_plan
from distill.core.spec import JobSpec, SpecError, TrackingSpec
from distill.core.spec_loading import redacted
from distill.jobs.driver import Folder, drive, start_cluster, start_service, stop_service
from distill.jobs.preflight import check_storage
from distill.jobs.run import run_dir_for, run_job
from distill.jobs.run_folder import check_same_as_existing
from distill.jobs.sweep_check import CheckedSweep, check_sweep

SWEEP_FILE = "sweep.yaml"
_SMOKE_TRIALS = 4
_SMOKE_GRACE = 10


def smoke_sweep_planned(
    sweep: SweepSpec, explicit: set[str] | None = None
) -> tuple[SweepSpec, SmokePlan]:
    """A 2-4-trial version, and what changed: the base shrunk like `distill run --smoke`,
    at most two values per dimension and at most four grid points, at most three sampled
    trials. `explicit`: the dotted fields `--set` gave (`base.training.steps`, ...), kept."""
    explicit = explicit or set()
    base_spec = sweep.base_spec()
    base_explicit = {f.removeprefix("base.") for f in explicit if f.startswith("base.")}
    base_plan = smoke_plan(base_spec, base_explicit)
    base = apply_smoke(base_spec, base_plan).model_dump(mode="json")
    space = {}
    for key, p in sweep.space.items():
        if p.grid is not None:
            space[key] = p.model_copy(update={"grid": p.grid[:2]})
        elif p.choice is not None:
            space[key] = p.model_copy(update={"choice": p.choice[:2]})
        else:
            space[key] = p
    points = 1
    for key in space:  # the first dimensions keep two grid values while the total stays <= 4
        p = space[key]
        if p.grid is not None:
            if points * len(p.grid) > _SMOKE_TRIALS:
                space[key] = p.model_copy(update={"grid": p.grid[:1]})
            points *= len(space[key].grid)
    fewer = {
        f"space.{k}": (p.values, space[k].values)
        for k, p in sweep.space.items()
        if p.values != space[k].values
    }
    trials = min(sweep.search.num_samples, 3) if sweep.search.algorithm != "grid" else 1
    grace = min(sweep.scheduler.grace_period, _SMOKE_GRACE)
    targets = {"search.num_samples": trials, "scheduler.grace_period": grace}
    runs = plan_changes(sweep, targets, explicit)
    smoked = apply_smoke(sweep.model_copy(update={"base": base, "space": space}), runs)
    return smoked, base_plan.prefixed("base.") | SmokePlan(fewer, {}) | runs


def smoke_sweep(sweep: SweepSpec, explicit: set[str] | None = None) -> SweepSpec:
    """`smoke_sweep_planned` without the plan."""
    return smoke_sweep_planned(sweep, explicit)[0]


def _data_in_space(sweep: SweepSpec) -> str | None:
    for key in sweep.space:
        if key.startswith("data.") or key == "data" or key == "training.seed":
            return f"space.{key} changes the training rows"
    return None


def _check_same_sweep(storage: Storage, sweep: SweepSpec) -> None:
    check_same_as_existing(
        storage,
        SWEEP_FILE,
        redacted(sweep.model_dump(mode="json")),
        ("base", "space", "search", "scheduler"),
        "sweep",
        "use a new --output",
    )


@dataclass(frozen=True)
class PreparedSweep:
    """A sweep whose every check passed, nothing written yet."""

    sweep: SweepSpec
    checked: CheckedSweep
    folder: Folder
    tracking: TrackingSpec


def prepare_sweep(sweep: SweepSpec, output: str | None = None) -> PreparedSweep:
    """Every check of `distill tune`, before anything is written and before Ray: the sweep
    and every combination of its space, the folder (reachable, the same sweep as one already
    there), the tracking settings."""
    checked = check_sweep(sweep)
    base_spec = JobSpec.model_validate(checked.base)  # checked: valid
    field = "--output" if output else "base.output.dir"
    storage = check_storage(run_dir_for(base_spec, output), base_spec, field)
    _check_same_sweep(storage, sweep)
    try:
        named = base_spec.output.model_copy(update={"name": storage.name})  # as --output says
        tracking = with_tracking(base_spec.model_copy(update={"output": named}), storage).tracking
    except SpecError as exc:
        raise SpecError(f"base.{exc}") from None
    text = yaml.safe_dump(redacted(sweep.model_dump(mode="json")), sort_keys=False)
    ttl_s = base_spec.output.lease_ttl_s
    folder = Folder(storage, field, SWEEP_FILE, text, "sweep", lease_ttl_s=ttl_s)
    return PreparedSweep(sweep, checked, folder, tracking)


def run_sweep(
    sweep: SweepSpec,
    output: str | None = None,
    *,
    max_params: int | None = None,
    min_speedup: float | None = None,
    force: bool = False,
    on_checked: Callable[[], None] | None = None,
) -> dict:
    """Run (or resume) a sweep end to end; returns its report (`jobs/driver.py`: prepare,
    lease, folder, cluster, launch, report). The sweep holds one lease on its folder
    throughout (its trials write under it and take none of their own); `force` takes over
    another writer's lease; `on_checked` is called once every check has passed, before
    anything is written."""
    started = time.perf_counter()
    prepared = prepare_sweep(sweep, output)
    choose = (
        max_params if max_params is not None else sweep.choose.max_params,
        min_speedup if min_speedup is not None else sweep.choose.min_speedup,
    )
    return drive(
        prepared.folder,
        lambda: _launch_sweep(prepared, started, choose),
        force=force,
        on_checked=on_checked,
    )


def _sweep_cache_request(prepared: PreparedSweep):
    """One teacher-output cache for every trial (the union of what their objectives read),
    or why the teacher runs live in each trial."""
    from distill.cluster.cache_store import resolve_cache

    sweep, checked = prepared.sweep, prepared.checked
    first = checked.combinations[0][1].spec
    bypass = _data_in_space(sweep)
    if not sweep.teacher_cache:
        bypass = "teacher_cache: false in the sweep file"
    if first.teacher.placement == "service":
        bypass = "teacher.placement: service (one deployment answers every trial)"
    if bypass is not None:
        return None, bypass
    mode = first.teacher.cache.mode if first.teacher.cache.mode != "off" else "auto"
    cache = first.teacher.cache.model_copy(update={"mode": mode})
    cache_spec = first.model_copy(
        update={"teacher": first.teacher.model_copy(update={"cache": cache})}
    )
    trials = tuple(stage.spec for _, stage in checked.combinations)
    return resolve_cache(cache_spec, prepared.folder.storage, trials)


def _trial_order(prepared: PreparedSweep) -> list[dict] | None:
    """The trials' order when `search.order: init_quality` (best student at initialisation
    first); None otherwise, and for a resumed sweep (Tune saved its order)."""
    from distill.cluster.tune_sweep import resumable

    if prepared.sweep.search.order != "init_quality" or resumable(prepared.folder.storage):
        return None
    from distill.jobs.sweep_order import init_quality_order

    combinations = prepared.checked.combinations
    ranked = init_quality_order([(p, stage.spec) for p, stage in combinations])
    for params, quality in ranked:
        print(f"[distill] quality at initialisation {quality:.4f}: {params}", flush=True)
    return [params for params, _ in ranked]


def _launch_sweep(prepared: PreparedSweep, started: float, choose: tuple) -> dict:
    """The cluster, then the shared cache or teacher deployment, the Tune experiment and
    the sweep's report; a deployment the sweep started is deleted at the end."""
    first = prepared.checked.combinations[0][1].spec
    request, bypass = _sweep_cache_request(prepared)
    if bypass:
        print(f"[distill] teacher cache bypassed: {bypass}", flush=True)
    points = _trial_order(prepared)
    cache = start_cluster(first, request)
    service = start_service(first) if first.teacher.placement == "service" else None
    try:
        return _run_trials(prepared, started, choose, cache, bypass, points, service)
    finally:
        stop_service(service)


def _run_trials(prepared: PreparedSweep, started, choose, cache, bypass, points, service) -> dict:
    """The Tune experiment (every trial through `run_trial`), then the sweep's report."""
    from distill.cluster.cache_store import cache_summary
    from distill.cluster.lease import fence_of
    from distill.cluster.tracking import local_root, tune_callbacks
    from distill.cluster.tune_sweep import TRIALS_DIR, max_concurrent_trials, run_tuner

    sweep, checked, storage = prepared.sweep, prepared.checked, prepared.folder.storage
    first = checked.combinations[0][1].spec
    concurrency = max_concurrent_trials(first, sweep.max_concurrent_trials)
    print(
        f"[distill] sweep: {len(checked.combinations)} valid combinations checked; "
        f"{sweep.search.algorithm} search, {sweep.scheduler.kind} scheduler, "
        f"{concurrency} concurrent trial(s)",
        flush=True,
    )
    context = {
        "base": checked.base,
        "trials_uri": storage.child(TRIALS_DIR).uri,
        "cache": cache,
        "bypass": bypass,
        "service": service,
        "fence": fence_of(storage.uri),  # every trial writes under the sweep's lease
    }
    results = run_tuner(
        sweep,
        checked.base,
        first.training.steps,
        storage,
        run_trial,
        context,
        concurrency,
        callbacks=tune_callbacks(prepared.tracking, local_root(storage)),
        points=points,
    )
    summary = cache_summary(cache, bypass)
    return _report_sweep(prepared, results, concurrency, summary, started, choose, service)


def _report_sweep(
    prepared: PreparedSweep,
    results,
    concurrency: int,
    cache: dict,
    started: float,
    choose,
    service=None,
) -> dict:
    """`sweep_report.json`, `pareto.png` and the chosen student, written last."""
    from distill.cluster.tune_sweep import saved_statuses
    from distill.jobs.sweep_report import build_sweep_report, trial_rows, write_sweep_outputs

    sweep, storage = prepared.sweep, prepared.folder.storage
    first = prepared.checked.combinations[0][1].spec
    max_params, min_speedup = choose
    report = build_sweep_report(
        trial_rows(results, saved_statuses(results)),
        {
            "dir": storage.uri,
            "algorithm": sweep.search.algorithm,
            "objectives": sweep.search.objectives,
            "scheduler": sweep.scheduler.model_dump(mode="json"),
            "space": {
                k: v.model_dump(mode="json", exclude_none=True) for k, v in sweep.space.items()
            },
            "max_concurrent_trials": concurrency,
            "steps_per_trial": first.training.steps,
            "teacher": first.teacher.name,
            "teacher_cache": cache,
            "wall_time_s": None,
        },
        max_params=max_params,
        min_speedup=min_speedup,
    )
    if service is not None:  # where the teacher ran, and how its forwards were batched
        from distill.cluster.teacher_service import service_record

        report["sweep"]["teacher_service"] = service_record(service)
    report["sweep"]["wall_time_s"] = time.perf_counter() - started
    write_sweep_outputs(storage, report)
    return report


def final_metrics(report: dict) -> dict:
    """What a finished trial reports to Tune: the searchable metrics plus the teacher's."""
    return {
        "quality": report["quality"]["student"],
        "retention": report["quality"]["retention"],
        "speedup": report["speed"]["speedup"],
        "params": report["size"]["student_parameters"],
        "teacher_quality": report["quality"]["teacher"],
        "teacher_params": report["size"]["teacher_parameters"],
        "quality_metric": report["quality"]["metric"],
        "step": report["training"]["steps"],
        "checkpoint": report["paths"]["checkpoint"],
        "run_dir": report["run"]["dir"],
    }


def run_trial(params: dict, context: dict) -> None:
    """The Tune function trainable: one distillation job with this trial's values, through
    the same runner as `distill run`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from distill.cluster.lease import enter_fence

    spec = JobSpec.model_validate(apply_params(context["base"], trial_params(params)))
    # The sweep's Tune logger callbacks track every trial; its workers log no second copy.
    spec = spec.model_copy(update={"tracking": TrackingSpec()})
    trial_id = tune.get_context().get_trial_id()
    enter_fence(context.get("fence"), spec.output.s3)
    report = run_job(
        spec,
        f"{context['trials_uri']}/{trial_id}",
        teacher_cache=context["cache"],
        cache_bypass=context["bypass"],
        teacher_service=context.get("service"),
        callbacks=[TuneReportCallback()],
        lease=False,  # the sweep holds the lease of its whole folder
    )
    tune.report(final_metrics(report))
