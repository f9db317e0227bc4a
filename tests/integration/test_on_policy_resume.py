"""On-policy distillation (GKD, `objective.on_policy`) resumes mid-stage on a real 2-worker
Ray Train job: a Train worker killed between checkpoints makes Ray Train restart the worker
group from the newest checkpoint, and the run ends with the same logged losses as the same
run never stopped (the draw of on-policy steps and the student's samples depend only on the
seed, the step and the rank: `distill.core.generative.on_policy_step` / `sampling_seed`)."""

from __future__ import annotations

import json
import threading

import pytest
from helpers.family_zoo import tiny_lm_job
from test_fault_tolerance import kill_worker_after

from distill.cluster.report_log import REPORTS_FILE, read_reports
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow(
    reason="two 2-worker Ray Train jobs of a causal LM, one restarted after a killed worker "
    "(about 150 s); the on-policy example runs in the default suite, the draw is unit-tested"
)
def test_an_on_policy_run_killed_mid_stage_ends_as_the_run_never_stopped(ray_session, tmp_path):
    spec = load_spec(
        None,
        [
            *tiny_lm_job(tmp_path),
            "training.steps=8",
            "training.eval_every=100",
            "training.checkpoint_every=3",
            "objective.weights={lm: 1.0, lm_jsd: 1.0}",
            "objective.on_policy={fraction: 0.5, max_new_tokens: 6}",
            "scaling.max_failures=1",
        ],
    )
    straight = run_job(spec, str(tmp_path / "straight"))

    run_dir = tmp_path / "killed"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run_job(spec, str(run_dir))))
    thread.start()
    kill_worker_after(run_dir, step=4)  # after the checkpoint of step 3
    thread.join(timeout=900)
    events = read_reports(run_dir / "train" / REPORTS_FILE)
    assert [e["event"] for e in events].count("failure") == 1  # the worker group restarted

    history, want = _history(run_dir), _history(tmp_path / "straight")
    assert [h["step"] for h in history] == [h["step"] for h in want] == list(range(1, 9))
    for a, b in zip(want, history, strict=True):  # the same draws, samples and updates
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (a, b)
    assert result["report"]["training"]["final_loss"] == pytest.approx(
        straight["training"]["final_loss"], rel=1e-4
    )
