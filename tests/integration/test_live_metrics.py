"""Integration: what a user watches while a real 2-worker run trains, and DeepSpeed
passthrough reaching the engine.

One ZeRO-3 run with parameter offload, gradient accumulation 2 and a `deepspeed.config`
file: `metrics.jsonl` and the TensorBoard events are read while the run is still in
progress (before report.json exists), and the checkpoint's DeepSpeed counters show that
every optimizer step read 2 micro-batches per worker."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from helpers.tensorboard import scalars

from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

STEPS, BATCH, WORKERS, ACCUMULATION = 10, 8, 2, 2
SETTINGS = [
    "student.layers=2",
    f"training.steps={STEPS}",
    f"training.batch_size={BATCH}",
    f"training.gradient_accumulation_steps={ACCUMULATION}",
    "training.log_every=2",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "training.warmup_steps=1",
    "training.learning_rate=5e-4",
    "deepspeed.zero_stage=3",
    "deepspeed.offload_parameters=true",
    "data.max_length=32",
    "data.max_train_samples=400",
    "data.max_eval_samples=32",
    "evaluation.throughput_texts=32",
    "evaluation.throughput_rounds=1",
]


@pytest.mark.slow(
    reason=(
        "a ZeRO-3 job with parameter offload and MLflow + offline W&B trackers, polled while it "
        "trains; default runs write metrics.jsonl and TensorBoard events, and DeepSpeed config "
        "merging is unit-tested"
    )
)
def test_metrics_and_events_grow_while_training_and_deepspeed_gets_the_config(
    ray_session, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    user = {"zero_optimization": {"stage3_max_live_parameters": 20_000_000}}
    (tmp_path / "ds.json").write_text(json.dumps(user))
    spec = load_spec(
        None,
        [
            *SETTINGS,
            f"deepspeed.config={tmp_path / 'ds.json'}",
            "tracking.mlflow={}",  # default store: mlflow.db in the run folder
            "tracking.wandb={project: distill-test, mode: offline}",
        ],
    )
    run_dir = tmp_path / "live"
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(report=run_job(spec, str(run_dir))))
    worker.start()

    mid_run = None
    deadline = time.monotonic() + 600
    while worker.is_alive() and time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().strip():
            mid_run = {
                "steps": [json.loads(x)["step"] for x in metrics.read_text().splitlines()],
                "events": scalars(run_dir / "tensorboard"),
                "report": (run_dir / "report.json").exists(),
            }
            break
        time.sleep(0.2)
    worker.join(timeout=600)
    assert "report" in done, "the run did not finish"

    assert mid_run is not None, "metrics.jsonl never appeared while the run trained"
    assert mid_run["report"] is False  # read while training, not after
    assert mid_run["steps"] and max(mid_run["steps"]) < STEPS
    assert [s for s, _ in mid_run["events"]["train/loss"]] == mid_run["steps"]

    final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in final] == [2, 4, 6, 8, 10]
    events = scalars(run_dir / "tensorboard")
    assert [s for s, _ in events["train/loss"]] == [2, 4, 6, 8, 10]
    assert [s for s, _ in events["eval/loss"]] == [4, 8, 10]
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # The engine got the merged config, and every step accumulated 2 micro-batches a worker.
    config = json.loads((run_dir / "deepspeed.json").read_text())
    assert config["zero_optimization"]["stage3_max_live_parameters"] == 20_000_000
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["gradient_accumulation_steps"] == ACCUMULATION
    final_checkpoint = done["report"]["paths"]["checkpoint"]
    state = torch.load(
        f"{final_checkpoint}/engine/zero_pp_rank_0_mp_rank_00_model_states.pt",
        weights_only=False,
    )
    assert state["global_steps"] == STEPS
    assert state["global_samples"] == STEPS * BATCH * WORKERS * ACCUMULATION
    assert done["report"]["export_check"]["max_abs_diff"] < 1e-5

    # The same steps reached MLflow and W&B from rank 0 (Ray's setup_mlflow / setup_wandb).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["student.layers"] == "2"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == [2, 4, 6, 8, 10]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
