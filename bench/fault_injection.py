"""Fault injection: kill one Ray Train worker (SIGKILL, pid from Ray's state API) at a random
point of a small job, again and again, and report how many runs survived and how many steps
each kill cost.

    python bench/fault_injection.py --attempts 4 --seed 0 [--out bench/results/fault_injection.json]

Every attempt is a fresh run of the same job (packaged teacher, 1-layer student, 20 steps,
a checkpoint every 5, `scaling.max_failures=1`) in one local Ray (2 CPUs). The kill point
is random: a step drawn in [2, steps - 2], then a random delay of 0-1.5 s after that step's
report, so kills land inside steps, inside checkpoint saves and between them. Per attempt:

- survived: the run finished all steps and wrote report.json;
- lost steps: steps reported before the kill and reported again after it (the work redone
  from the checkpoint); the bound is `training.checkpoint_every`;
- restart s: from the failure to the first report of the new worker group;
- wall s: the whole run, against the uninterrupted run's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.fault_runs import small_job  # noqa: E402

from distill.cluster.report_log import REPORTS_FILE, read_reports, retries  # noqa: E402

STEPS, CHECKPOINT_EVERY = 20, 5
JOB = [*small_job(STEPS, CHECKPOINT_EVERY), "scaling.max_failures=1"]


def train_worker_pids(address: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return sorted(a.pid for a in actors if a.pid)


def one_attempt(run_dir: Path, kill_step: int | None, delay: float, rng: random.Random) -> dict:
    import ray

    from distill.core.spec_loading import load_spec
    from distill.jobs.run import run_job

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = run_job(load_spec(None, JOB), str(run_dir))
        except BaseException as exc:  # counted as not survived
            outcome["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    started = time.time()
    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    reports = run_dir / "train" / REPORTS_FILE
    while kill_step is not None and thread.is_alive() and killed is None:
        events = read_reports(reports) if reports.is_file() else []
        steps = [e["step"] for e in events if e["event"] == "report"]
        if steps and steps[-1] >= kill_step:
            time.sleep(delay)
            pids = train_worker_pids(ray.get_runtime_context().gcs_address)
            if pids:
                killed = rng.choice(pids)
                os.kill(killed, signal.SIGKILL)
                outcome["killed_after_step"] = read_steps(reports)
        time.sleep(0.05)
    thread.join()
    events = read_reports(reports) if reports.is_file() else []
    rows = retries(events)
    report = outcome.get("report")
    return {
        "kill_step": kill_step,
        "delay_s": round(delay, 2),
        "killed_pid": killed,
        "killed_after_step": outcome.get("killed_after_step"),
        "survived": report is not None and report["training"]["steps"] == STEPS,
        "failures": len(rows),
        "lost_steps": sum(r["redone"] or 0 for r in rows),
        "resumed_from": [r["resumed_from"] for r in rows],
        "restart_s": [r["restart_s"] for r in rows],
        "final_loss": report["training"]["final_loss"] if report else None,
        "wall_s": round(time.time() - started, 1),
        "error": outcome.get("error"),
    }


def read_steps(reports: Path) -> int | None:
    steps = [e["step"] for e in read_reports(reports) if e["event"] == "report"]
    return steps[-1] if steps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/fault_injection.json")
    args = parser.parse_args()

    import datasets
    import ray

    from distill.cluster.worker_env import worker_env
    from distill.core.spec import JobSpec

    datasets.disable_progress_bars()
    ray.init(
        num_cpus=2,
        runtime_env={"env_vars": worker_env(JobSpec())},
        logging_level="ERROR",
        log_to_driver=False,
    )
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-faults-") as tmp:
        baseline = one_attempt(Path(tmp) / "baseline", None, 0.0, rng)
        print(
            f"uninterrupted: wall {baseline['wall_s']} s, final loss {baseline['final_loss']}",
            flush=True,
        )
        for i in range(args.attempts):
            kill_step, delay = rng.randint(2, STEPS - 2), rng.uniform(0.0, 1.5)
            row = one_attempt(Path(tmp) / f"attempt{i}", kill_step, delay, rng)
            rows.append(row)
            print(json.dumps(row), flush=True)
    ray.shutdown()
    survived = sum(r["survived"] for r in rows)
    summary = {
        "job": JOB,
        "steps": STEPS,
        "checkpoint_every": CHECKPOINT_EVERY,
        "attempted": len(rows),
        "survived": survived,
        "lost_steps": [r["lost_steps"] for r in rows],
        "max_lost_steps": max((r["lost_steps"] for r in rows), default=None),
        "restart_s": [s for r in rows for s in r["restart_s"] if s is not None],
        "baseline": baseline,
        "attempts": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"survived {survived}/{len(rows)}; lost steps per kill {summary['lost_steps']} "
        f"(bound {CHECKPOINT_EVERY}); restart {summary['restart_s']} s; "
        f"baseline final loss {baseline['final_loss']}, "
        f"killed runs {[r['final_loss'] for r in rows]}"
    )


if __name__ == "__main__":
    main()
