"""Ray Tune over distillation jobs: every trial is a real `distill run` (Ray Train
`TorchTrainer` with DeepSpeed workers), started from a Tune function trainable whose Train
metrics reach Tune through `TuneReportCallback` (Ray's pattern since Train V2; wrapping a
trainer in `Tuner` is deprecated). The trial then reports its final quality, speedup and
size from the run's `report.json`.

Trial drivers reserve no CPU: each trial's Train workers hold its resources, and
`max_concurrent_trials` is set so that only as many trials run as the cluster can place
workers for (more would wait on placement groups forever on a small machine).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from distill.cluster.sweep_spec import POINT, TRIAL_METRICS, SweepSpec
from distill.core.spec import JobSpec

TUNE_DIR = "tune"  # Tune's experiment state and trial results, under the sweep's storage
TRIALS_DIR = "trials"  # one `distill run` folder per trial


def max_concurrent_trials(spec: JobSpec, requested: int | None) -> int:
    """How many trials' Train workers fit in the cluster at once (at least 1)."""
    resources = ray.cluster_resources()
    sc = spec.scaling
    fits = int(resources.get("CPU", 0) // (sc.num_workers * sc.cpus_per_worker))
    if sc.gpus_per_worker:
        fits = min(fits, int(resources.get("GPU", 0) // (sc.num_workers * sc.gpus_per_worker)))
    fits = max(fits, 1)
    return min(fits, requested) if requested else fits


class ReleaseTrainResources(tune.Callback):
    """Remove a finished or stopped trial's Ray Train placement group.

    When a scheduler (ASHA) stops a trial, Tune kills its driver mid-`fit`. Ray Train's
    placement group belongs to the job, not to the killed controller, and Train's own cleaner
    finds the dead controller through the State API, which can be slow or unavailable on a
    loaded node; until then the trial's CPUs stay reserved and the next trial's workers wait
    forever. The workers report their placement group with every result, so the sweep
    driver removes it as soon as Tune is done with the trial."""

    def __init__(self) -> None:
        self._groups: dict[str, set[str]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        group = result.get("placement_group")
        if group:
            self._groups.setdefault(trial.trial_id, set()).add(group)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        for group in self._groups.pop(trial_id, ()):
            try:  # already gone when the run ended normally
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
            except Exception:  # noqa: BLE001 - nothing to release
                pass


class _FinalResultOptuna(OptunaSearch):
    """Optuna scores a trial on its final report; the in-training results forwarded from
    Ray Train do not carry the sweep's objectives, so they are not shown to it."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if all(m in result for m in metrics):
            super().on_trial_result(trial_id, result)


def param_space(sweep: SweepSpec, points: list[dict] | None = None) -> dict:
    """Tune's space for the sweep; `points`: every grid point, in the order to run them."""
    if points is not None:
        return {POINT: tune.grid_search(points)}
    space = {}
    for key, p in sweep.space.items():
        if p.grid is not None:
            space[key] = tune.grid_search(p.grid)
        elif p.choice is not None:
            space[key] = tune.choice(p.choice)
        elif p.uniform is not None:
            space[key] = tune.uniform(*p.uniform)
        elif p.loguniform is not None:
            space[key] = tune.loguniform(*p.loguniform)
        else:
            space[key] = tune.randint(*p.randint)
    return space


class _PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II as Tune can save it: Tune pickles the searcher into the experiment state
    (`Tuner.__init__`, every checkpoint), and optuna >= 5's genetic samplers hold a
    `threading.Lock` without a `__getstate__` (TypeError: cannot pickle '_thread.lock')."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def searcher(sweep: SweepSpec, concurrency: int | None = None):
    s = sweep.search
    if s.algorithm != "optuna":
        # Tune ignores TuneConfig.max_concurrent_trials for a variant generator: it takes
        # its own limit.
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=concurrency or 0)
    modes = [TRIAL_METRICS[m] for m in s.objectives]
    multi = len(s.objectives) > 1
    sampler = _PicklableNSGAII(seed=s.seed) if multi else optuna.samplers.TPESampler(seed=s.seed)
    return _FinalResultOptuna(
        metric=s.objectives if multi else s.objectives[0],
        mode=modes if multi else modes[0],
        sampler=sampler,
    )


class FinishingASHA(ASHAScheduler):
    """ASHA whose trials always finish once they reach the last training step: stopping one
    there would save no training and lose its final evaluation (quality, speed, size)."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def scheduler(sweep: SweepSpec, steps: int):
    sc = sweep.scheduler
    if sc.kind == "fifo":
        return FIFOScheduler()
    return FinishingASHA(
        time_attr="step",
        metric=sc.metric,
        mode=sc.mode,
        max_t=steps,
        grace_period=min(sc.grace_period, steps),
        reduction_factor=sc.reduction_factor,
        stop_last_trials=False,
    )


def resumable(storage) -> bool:
    """Whether `storage/tune` holds a sweep `run_tuner` continues (`Tuner.restore`) rather
    than starts. Reads the experiment state only: no Ray resources."""
    storage_path, filesystem = storage.ray_storage()
    experiment = f"{storage_path.rstrip('/')}/{TUNE_DIR}"
    return tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)


def run_tuner(
    sweep: SweepSpec,
    base: dict,
    steps: int,
    storage,
    trial: Callable[[dict, dict], None],
    context: dict,
    concurrency: int,
    callbacks: list | None = None,
    points: list[dict] | None = None,
) -> tune.ResultGrid:
    """Run `trial(params, context)` (a Tune function trainable; `distill.jobs.tune.run_trial`
    runs one job) for every point of the sweep's space. Start the sweep, or continue it when `storage/tune` holds an interrupted one
    (`Tuner.restore`: finished trials are kept, unfinished ones resume from their last
    Ray Train checkpoint). `callbacks`: more Tune callbacks (the trackers' loggers);
    `points`: a grid's points in the order to run them (`search.order`)."""
    # Ray Train's in-training reports lack the final metrics a searcher optimises; Tune's
    # strict check would reject them (schedulers skip results without their metric).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    storage_path, filesystem = storage.ray_storage()
    # The trial driver must hold no CPU (its Train workers need them all on a small machine),
    # but Tune refuses an empty request: one byte of memory places it anywhere.
    trainable = tune.with_resources(
        tune.with_parameters(trial, context=context), {"CPU": 0, "memory": 1}
    )
    experiment = f"{storage_path.rstrip('/')}/{TUNE_DIR}"
    if resumable(storage):
        print(f"[distill] resuming the sweep in {storage.uri}", flush=True)
        tuner = tune.Tuner.restore(
            experiment,
            trainable,
            resume_unfinished=True,
            restart_errored=True,
            storage_filesystem=filesystem,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep, points),
            tune_config=tune.TuneConfig(
                search_alg=searcher(sweep, concurrency),
                scheduler=scheduler(sweep, steps),
                num_samples=sweep.search.num_samples,
                # A Searcher gets Tune's ConcurrencyLimiter; variant generators their own.
                max_concurrent_trials=concurrency if sweep.search.algorithm == "optuna" else None,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                callbacks=[ReleaseTrainResources(), *(callbacks or [])],
                verbose=1,
            ),
        )
    return tuner.fit()


def saved_statuses(results: tune.ResultGrid) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last. After Ctrl-C Tune
    snapshots the state (unfinished trials RUNNING or PENDING) before it stops them, so this
    tells an interrupted trial from one a scheduler stopped (TERMINATED)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    return {t.trial_id: t.status for t in analysis.trials}
