"""The Tune wiring of a sweep, without starting Ray: search space, searchers, scheduler and
the concurrency that keeps trials from waiting forever on their Train workers."""

from __future__ import annotations

import pytest
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from distill.cluster import tune_sweep
from distill.cluster.sweep_spec import POINT, SweepSpec, trial_params
from distill.core.spec import JobSpec

SPACE = {
    "student.layers": {"choice": [1, 2]},
    "training.learning_rate": {"loguniform": [1e-4, 1e-3]},
    "objective.temperature": {"uniform": [1.0, 4.0]},
    "student.ffn": {"randint": [256, 512]},
}


def test_param_space_maps_each_kind_to_tune():
    space = tune_sweep.param_space(SweepSpec(space=SPACE, search={"algorithm": "random"}))
    assert isinstance(space["student.layers"], tune.search.sample.Categorical)
    assert space["training.learning_rate"].lower == 1e-4
    assert isinstance(space["training.learning_rate"].get_sampler(), tune.search.sample.LogUniform)
    assert (space["student.ffn"].lower, space["student.ffn"].upper) == (256, 512)
    grid = tune_sweep.param_space(SweepSpec(space={"student.layers": {"grid": [1, 2]}}))
    assert grid["student.layers"] == {"grid_search": [1, 2]}


def test_an_ordered_grid_is_one_dimension_of_whole_points():
    points = [{"student.layers": 3, "student": {"hidden": 384}}, {"student.layers": 1}]
    space = tune_sweep.param_space(SweepSpec(space={"student.layers": {"grid": [1, 3]}}), points)
    assert space == {POINT: {"grid_search": points}}
    # A trial's values, ordered or not, are the space's keys.
    assert trial_params({POINT: points[0]}) == points[0]
    assert trial_params({"student.layers": 2}) == {"student.layers": 2}


def test_searchers_and_schedulers():
    variants = tune_sweep.searcher(SweepSpec(space={"student.layers": {"grid": [1]}}), 2)
    assert isinstance(variants, BasicVariantGenerator)
    # Tune ignores TuneConfig.max_concurrent_trials for variant generators: the limit is theirs.
    assert variants.max_concurrent == 2
    multi = tune_sweep.searcher(
        SweepSpec(space=SPACE, search={"algorithm": "optuna", "objectives": ["quality", "params"]})
    )
    assert multi.metric == ["quality", "params"] and multi.mode == ["max", "min"]
    # Tune pickles the searcher into its experiment state (Tuner.__init__ and every save):
    # optuna >= 5's NSGA-II sampler holds a lock that must not stop that.
    restored = cloudpickle.loads(cloudpickle.dumps(multi))
    assert restored.metric == multi.metric
    with restored._sampler._thread_lock:  # a working lock again after the round trip
        pass
    single = tune_sweep.searcher(SweepSpec(space=SPACE, search={"algorithm": "optuna"}))
    assert single.metric == "quality" and single.mode == "max"
    # In-training results lack the final metrics: the searcher must ignore them, not fail.
    single.on_trial_result("t0", {"step": 4, "eval_loss": 1.0})
    asha = tune_sweep.scheduler(
        SweepSpec(
            space=SPACE,
            search={"algorithm": "random"},
            scheduler={"kind": "asha", "grace_period": 500},
        ),
        steps=200,
    )
    assert isinstance(asha, ASHAScheduler)

    class Trial:
        trial_id = "t0"

    asha.on_trial_add(None, Trial())
    # A trial at its last step always finishes (it still owes its final evaluation) ...
    assert asha.on_trial_result(None, Trial(), {"step": 200, "eval_quality": -1.0}) == "CONTINUE"
    assert asha._time_attr == "step" and asha._max_t == 200 and asha.metric == "eval_quality"
    fifo = tune_sweep.scheduler(SweepSpec(space=SPACE, search={"algorithm": "random"}), steps=200)
    assert isinstance(fifo, FIFOScheduler)


@pytest.mark.parametrize(
    "resources, scaling, requested, expected",
    [
        ({"CPU": 2}, {"num_workers": 2}, None, 1),
        ({"CPU": 8}, {"num_workers": 2}, None, 4),
        ({"CPU": 8}, {"num_workers": 2}, 3, 3),
        ({"CPU": 8}, {"num_workers": 2}, 9, 4),  # never more than the cluster fits
        ({"CPU": 1}, {"num_workers": 2}, None, 1),  # at least one (it waits for a node)
        ({"CPU": 32, "GPU": 2}, {"num_workers": 1, "gpus_per_worker": 1}, None, 2),
    ],
)
def test_concurrency_from_cluster_resources(monkeypatch, resources, scaling, requested, expected):
    monkeypatch.setattr(tune_sweep.ray, "cluster_resources", lambda: resources)
    spec = JobSpec.model_validate({"scaling": scaling})
    assert tune_sweep.max_concurrent_trials(spec, requested) == expected


def test_a_folder_without_a_tune_experiment_is_not_resumable(tmp_path):
    """A new sweep folder (or one holding only other files) starts a sweep: `search.order`
    ranks its grid then; a saved experiment is resumed instead (the slow ordered-grid test)."""
    from distill.cluster.storage import open_storage

    storage = open_storage(tmp_path / "sweep")
    assert not tune_sweep.resumable(storage)
    (tmp_path / "sweep" / tune_sweep.TUNE_DIR).mkdir(parents=True)
    (tmp_path / "sweep" / "sweep.yaml").write_text("search: {}\n")
    assert not tune_sweep.resumable(storage)
