"""A diverging run stops with its last good state: a learning rate that makes the loss
explode (finite, but 1e3) drives it to nan within a few steps; the run stops after
`training.stop_after_nonfinite` non-finite steps with one line naming the step and the loss
parts, no checkpoint of a non-finite state is written, the newest checkpoint holds finite
weights, and nothing is exported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from distill.core.spec_loading import load_spec
from distill.jobs.run import TrainingDiverged, run_job

pytestmark = pytest.mark.ray

EXPLODING = [
    "student.layers=1",
    "training.steps=40",
    "training.batch_size=8",
    "training.log_every=1",
    "training.eval_every=40",
    "training.checkpoint_every=1",
    "training.keep_checkpoints=2",
    "training.warmup_steps=0",
    "training.learning_rate=1000.0",
    "training.stop_after_nonfinite=2",
    "data.max_length=24",
    "data.max_train_samples=200",
    "data.max_eval_samples=16",
]


def test_exploding_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(ray_session, tmp_path):
    run_dir = tmp_path / "explode"
    with pytest.raises(TrainingDiverged) as err:
        run_job(load_spec(None, EXPLODING), str(run_dir))
    line = str(err.value)
    assert "\n" not in line and "training diverged at step" in line
    assert "not finite for 2 consecutive steps (training.stop_after_nonfinite)" in line
    step = int(line.split("step ")[1].split(":")[0])
    assert step < 40  # stopped early, within N steps of going non-finite

    assert not (run_dir / "student").exists() and not (run_dir / "report.json").exists()
    checkpoints = sorted(p for p in (run_dir / "train").glob("checkpoint_*") if p.is_dir())
    assert checkpoints, "the finite steps before the explosion were checkpointed"
    newest = checkpoints[-1]
    state = json.loads((newest / "train_state.json").read_text())
    assert state["step"] < step and newest.name in line
    module = torch.load(newest / "engine" / "mp_rank_00_model_states.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in module["module"].values() if t.is_floating_point())
    assert all(json.dumps(h).count("NaN") == 0 for h in state["history"])


@pytest.mark.slow(
    reason=(
        "a second diverging job, through a CLI subprocess that starts its own Ray; the default "
        "test diverges the same job in process and checks the same error line"
    )
)
def test_cli_prints_one_line_and_exits_1(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", "run", "--output", str(tmp_path / "run")]
        + ["--set", *EXPLODING, "training.steps=12"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "RAY_ADDRESS": ""},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: error: training diverged at step"), last
