"""Integration: real 2-worker Ray Train + DeepSpeed ZeRO-2/3 jobs on the packaged teacher."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distill.core.export import load_encoder
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

SMALL = [
    "student.layers=2",
    "training.steps=8",
    "training.batch_size=8",
    "training.log_every=2",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "training.warmup_steps=1",
    "training.learning_rate=5e-4",
    "data.max_length=32",
    "data.max_train_samples=400",
    "data.max_eval_samples=32",
    "evaluation.throughput_texts=32",
    "evaluation.throughput_rounds=1",
]


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_completed_run(run_dir, report) -> None:
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert history[-1]["loss"] < history[0]["loss"]
    assert report["training"]["final_eval_loss"] < report["training"]["first_eval_loss"]
    assert report["teacher_check"]["unchanged"] is True
    assert report["export_check"]["max_abs_diff"] < 1e-5
    assert report["size"]["student_parameters"] < report["size"]["teacher_parameters"]
    assert 0 < report["quality"]["student"] <= 1.0
    assert report["speed"]["speedup"] > 0
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["run"]["status"] == "completed"
    assert "secret" not in (run_dir / "config.yaml").read_text()


@pytest.mark.slow(
    reason=(
        "another 2-worker job of the packaged teacher, with ZeRO-3; the default S3 job in "
        "test_s3_ray.py runs ZeRO-3"
    )
)
def test_zero3_job_trains_exports_and_reports(ray_session, tmp_path):
    run_dir = tmp_path / "zero3"
    report = run_job(load_spec(None, SMALL + ["deepspeed.zero_stage=3"]), str(run_dir))
    _check_completed_run(run_dir, report)

    # The export is a plain HF folder whose tokenizer matches the teacher's.
    encoder = load_encoder(run_dir / "student")
    assert encoder.model.config.num_hidden_layers == 2
    ids = encoder.tokenizer(["distillation keeps the teacher's vocabulary"])["input_ids"]
    assert encoder.tokenizer.unk_token_id not in ids[0]


@pytest.mark.slow(
    reason=(
        "two jobs: a run, then its continuation from the final checkpoint; test_reliability.py "
        "resumes a run in the default suite"
    )
)
def test_checkpoint_restores_and_training_continues(ray_session, tmp_path):
    run_dir = tmp_path / "resume"
    _check_completed_run(run_dir, run_job(load_spec(None, SMALL), str(run_dir)))  # ZeRO-2
    first = _history(run_dir)

    # The final checkpoint holds exactly the exported student's weights (ZeRO-2 keeps the
    # full module state in mp_rank_00_model_states.pt).
    checkpoints = sorted(p for p in (run_dir / "train").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # training.keep_checkpoints
    module = torch.load(
        checkpoints[-1] / "engine" / "mp_rank_00_model_states.pt", weights_only=False
    )["module"]
    exported = load_file(str(run_dir / "student" / "model.safetensors"))
    for name, value in exported.items():
        assert torch.equal(module[f"student.{name}"].float(), value), name

    report = run_job(load_spec(None, SMALL + ["training.steps=12"]), str(run_dir))
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    assert history[:4] == first  # history before the resume is carried over, not recomputed
    # Resumed from trained weights: the loss right after resuming is near the end loss,
    # well below the loss of the untrained student.
    assert history[4]["loss"] < first[0]["loss"]
    assert report["training"]["steps"] == 12
