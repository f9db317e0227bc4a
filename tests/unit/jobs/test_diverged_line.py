"""The one line a diverged run ends with: which guard stopped it, at which step, what is
kept. Non-finite values (`training.stop_after_nonfinite`) and a finite loss that stayed far
above its running median (`training.stop_on_spike`) each say so."""

from __future__ import annotations

from types import SimpleNamespace

from distill.jobs.run import diverged_line

CHECKPOINT = SimpleNamespace(path="/runs/r/train/checkpoint_2026-12-07_10-00-00.000000/")


def test_a_spike_names_its_factor_median_steps_and_the_part_that_exploded():
    record = {
        "step": 140,
        "spike": {
            "loss": 812.0,
            "median": 2.31,
            "parts": ["hidden_mse"],
            "factor": 100.0,
            "steps": 20,
        },
    }
    assert diverged_line(record, CHECKPOINT) == (
        "training diverged at step 140: the loss stayed above 100x its running median (2.31) "
        "for 20 consecutive steps, hidden_mse exploding (training.stop_on_spike); the newest "
        "checkpoint (checkpoint_2026-12-07_10-00-00.000000) is the last healthy state; nothing "
        "was exported (lower training.learning_rate or the loss weights)"
    )


def test_non_finite_values_keep_their_line():
    record = {"step": 7, "stage": "kd", "nonfinite": ["loss"], "nonfinite_steps": 3}
    line = diverged_line(record, None)
    assert line.startswith("training diverged at stage kd, step 7: loss not finite for 3")
    assert "no checkpoint was written" in line
