"""Fault tolerance: a Train worker killed mid-run (SIGKILL to the pid that Ray's state API
gives) costs at most one checkpoint interval of steps, and the run finishes and reports.

The run is small (1-layer student, 12 steps, a checkpoint every 3). Both tests are `slow`:
one checks the retry (and compares the redone steps' losses with their first execution), the
other trains an uninterrupted run of the same seed to compare final losses. The default suite
kills a worker of the ZeRO-3-teacher job instead (test_zero3_teacher.py), reusing
`kill_worker_after` from here. `bench/fault_injection.py` repeats the kill at random points.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from distill.cluster.report_log import REPORTS_FILE, read_reports, retries
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

CHECKPOINT_EVERY = 3
TINY = [
    "student.layers=1",
    "training.steps=12",
    "training.batch_size=8",
    "training.log_every=1",
    "training.eval_every=12",
    f"training.checkpoint_every={CHECKPOINT_EVERY}",
    "training.keep_checkpoints=2",
    "training.warmup_steps=1",
    "training.learning_rate=5e-4",
    "data.max_length=32",
    "data.max_train_samples=300",
    "data.max_eval_samples=16",
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
    "scaling.max_failures=1",
]


def train_worker_pids() -> list[int]:
    """Pids of the live Ray Train worker actors, from Ray's state API."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # never "auto": other Rays may run here
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return sorted(a.pid for a in actors if a.pid)


def kill_worker_after(run_dir, step: int, timeout: float = 600) -> dict:
    """Wait until the run reported `step`, then SIGKILL one Train worker. Returns what was
    killed and the last step reported before the kill."""
    reports = run_dir / "train" / REPORTS_FILE
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_reports(reports) if reports.is_file() else []
        steps = [e["step"] for e in events if e["event"] == "report"]
        if steps and steps[-1] >= step:
            pids = train_worker_pids()
            victim = pids[-1]
            os.kill(victim, signal.SIGKILL)
            return {"pid": victim, "reported": steps[-1], "pids": pids}
        time.sleep(0.05)
    raise TimeoutError(f"the run never reported step {step}")


@pytest.fixture(scope="module")
def killed_run(ray_session, tmp_path_factory) -> dict:
    """The TINY job with one Train worker SIGKILLed right after the report of step
    CHECKPOINT_EVERY + 1 (a checkpoint at CHECKPOINT_EVERY is then the latest)."""
    run_dir = tmp_path_factory.mktemp("fault") / "killed"
    result: dict = {"run_dir": run_dir}

    def run() -> None:
        try:
            result["report"] = run_job(load_spec(None, TINY), str(run_dir))
        except BaseException as exc:  # surfaced by the tests
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    result["killed"] = kill_worker_after(run_dir, step=CHECKPOINT_EVERY + 1)
    thread.join(timeout=900)
    return result


@pytest.mark.slow(
    reason=(
        "a 12-step job with a Train worker SIGKILLed mid-run and a new worker group resumed "
        "from its checkpoint; the default suite kills a worker of the ZeRO-3-teacher job in "
        "test_zero3_teacher.py"
    )
)
def test_killed_worker_resumes_from_latest_checkpoint(killed_run):
    assert "error" not in killed_run, killed_run.get("error")
    run_dir, killed, report = killed_run["run_dir"], killed_run["killed"], killed_run["report"]

    events = read_reports(run_dir / "train" / REPORTS_FILE)
    failures = [e for e in events if e["event"] == "failure"]
    assert len(failures) == 1, failures
    # The dead worker's rank is named (its health check failed); the other rank lost gloo.
    assert any("WorkerHealthCheckFailedError" in err for err in failures[0]["ranks"].values())
    assert events[-1]["event"] == "report" and events[-1]["step"] == 12
    assert killed["pid"] in events[0]["pids"]  # the state API's pid was a worker of this run
    first_failure = events.index(failures[0])
    before = {e["step"]: e for e in events[:first_failure] if e["event"] == "report"}
    (retry,) = retries(events)
    # The retry resumed from the latest checkpoint reported before the kill ...
    latest = max(s for s, e in before.items() if e["checkpoint"])
    assert retry["resumed_from"] == latest >= CHECKPOINT_EVERY, events
    # ... so it redid at most one checkpoint interval of steps.
    assert 0 <= retry["redone"] <= CHECKPOINT_EVERY, events
    after = [e for e in events[first_failure:] if e["event"] == "report"]
    # The retry ran on a new worker group: none of the killed group's pids report again.
    assert killed["pid"] not in after[0]["pids"]
    assert all(e["attempt"] == 1 for e in after)
    # Steps redone from the restored checkpoint repeat the first attempt's losses: model,
    # optimizer and data position were restored (dropout draws differ: not bit-exact).
    for e in after:
        if e["step"] in before:
            assert e["loss"] == pytest.approx(before[e["step"]]["loss"], rel=0.05), e["step"]

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 13))  # the checkpoint's history + retry
    assert report["run"]["status"] == "completed" and report["training"]["steps"] == 12
    assert report["training"]["final_loss"] < report["training"]["first_loss"]
    assert (run_dir / "student" / "config.json").is_file()


@pytest.mark.slow(
    reason=(
        "trains a second, uninterrupted job of the same seed to compare its final loss with the "
        "killed run's"
    )
)
def test_killed_run_ends_near_the_uninterrupted_loss(killed_run, tmp_path):
    """The same job without the kill, same seed: a comparable final loss."""
    assert "error" not in killed_run, killed_run.get("error")
    clean = run_job(load_spec(None, TINY), str(tmp_path / "clean"))
    a, b = killed_run["report"]["training"]["final_loss"], clean["training"]["final_loss"]
    assert abs(a - b) <= 0.05 * abs(b), (a, b)
