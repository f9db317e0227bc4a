"""Live metrics: each logged step is in metrics.jsonl and in TensorBoard events the moment
`log` returns; a resume keeps only the checkpoint's history."""

from __future__ import annotations

import json

from helpers.tensorboard import scalars

from distill.cluster.live_metrics import LiveMetrics, scalar_tags
from distill.cluster.storage import LocalStorage


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_logged_step_is_readable_at_once(tmp_path):
    live = LiveMetrics(LocalStorage(tmp_path), "metrics.jsonl", "tensorboard", [])
    live.log({"step": 2, "loss": 3.0, "lr": 1e-4, "placement_group": "ab", "eval_loss": 2.5})
    assert _lines(tmp_path / "metrics.jsonl") == [
        {"step": 2, "loss": 3.0, "lr": 1e-4, "placement_group": "ab", "eval_loss": 2.5}
    ]
    assert scalars(tmp_path / "tensorboard")["train/loss"] == [(2, 3.0)]
    live.log({"step": 4, "loss": 2.0, "lr": 2e-4})
    assert [h["step"] for h in _lines(tmp_path / "metrics.jsonl")] == [2, 4]
    events = scalars(tmp_path / "tensorboard")
    assert events["train/loss"] == [(2, 3.0), (4, 2.0)]
    assert events["eval/loss"] == [(2, 2.5)]
    live.close()


def test_a_resume_rewrites_the_file_from_the_checkpoint_history(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6))
    )
    live = LiveMetrics(LocalStorage(tmp_path), "metrics.jsonl", "tb", [{"step": 2, "loss": 1.0}])
    live.log({"step": 4, "loss": 0.5})
    assert [(h["step"], h["loss"]) for h in _lines(tmp_path / "metrics.jsonl")] == [
        (2, 1.0),
        (4, 0.5),
    ]
    live.close()


def test_tags_group_metrics_by_kind_and_skip_what_is_not_a_number():
    tags = scalar_tags(
        {
            "step": 3,
            "epoch": 0,
            "stage": "kd",
            "loss": 1.0,
            "loss_kd": 0.5,
            "eval_accuracy": 0.9,
            "samples_per_s": 100.0,
            "ms_forward": 3.0,
            "rss_peak_mb": 900.0,
            "placement_group": None,
            "eval_quality": float("nan"),
        }
    )
    assert tags == {
        "train/loss": 1.0,
        "train/loss_kd": 0.5,
        "eval/accuracy": 0.9,
        "perf/samples_per_s": 100.0,
        "perf/ms_forward": 3.0,
        "memory/rss_peak_mb": 900.0,
    }
