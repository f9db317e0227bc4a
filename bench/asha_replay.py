"""ASHA replayed on a finished grid sweep: which trials Ray Tune's ASHA would have stopped,
the best quality it would have kept, and the compute it would have spent.

    python -m bench.asha_replay GRID_SWEEP_DIR [--grace 50] [--reduction-factor 2]
        [--out bench/results/asha_vs_grid.json]

With one trial at a time (2 CPUs, 2 Train workers per trial), an ASHA sweep over the same
space sees the same trials in the same order as the grid, and each trial trains exactly as in
the grid up to the step where ASHA stops it (same seed, same data order). So the grid's
recorded in-training STS-B dev Spearman (`eval_quality` every `grace` steps, from each
trial's metrics.jsonl) fed through Ray Tune's own ASHA bracket (`_Bracket.on_result`, the code
`ASHAScheduler` runs; like distill's `FinishingASHA`, a trial at its last step finishes)
gives ASHA's decisions exactly. Compute: steps trained (exact) and
worker-seconds (each trial's measured wall time x workers, pro-rated to its stop step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay(grid: Path, grace: int, rf: float) -> dict:
    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    report = json.loads((grid / "sweep_report.json").read_text())
    steps = report["sweep"]["steps_per_trial"]
    workers = 2
    bracket = _Bracket(min_t=grace, max_t=steps, reduction_factor=rf, s=0, stop_last_trials=False)
    rows = []
    for t in report["trials"]:  # trial-id order = the order the grid ran them
        history = [
            json.loads(line)
            for line in (grid / "trials" / t["trial_id"] / "metrics.jsonl").read_text().splitlines()
        ]
        stop = None
        for h in history:
            if "eval_quality" not in h or h["step"] >= steps:  # FinishingASHA: the last
                continue  # step always finishes (cluster/tune_sweep.py)
            if (
                bracket.on_result(_Trial(t["trial_id"]), h["step"], h["eval_quality"])
                == TrialScheduler.STOP
            ):
                stop = h["step"]
                break
        trained = stop or steps
        rows.append(
            {
                "params": t["params"],
                "stopped_at": stop,
                "steps": trained,
                "quality": None if stop else t["metrics"]["quality"],
                "grid_quality": t["metrics"]["quality"],
                "worker_seconds": t["metrics"]["time_total_s"] * workers * trained / steps,
                "grid_worker_seconds": t["metrics"]["time_total_s"] * workers,
            }
        )
    kept = [r for r in rows if r["quality"] is not None]
    grid_ws = sum(r["grid_worker_seconds"] for r in rows)
    asha_ws = sum(r["worker_seconds"] for r in rows)
    return {
        "benchmark": "asha_vs_grid",
        "method": "grid measured; ASHA replayed through ray.tune's _Bracket on the grid's eval curves",
        "space": report["sweep"]["space"],
        "steps_per_trial": steps,
        "grace": grace,
        "reduction_factor": rf,
        "grid": {
            "best_quality": max(r["grid_quality"] for r in rows),
            "steps_trained": steps * len(rows),
            "worker_seconds": grid_ws,
        },
        "asha": {
            "best_quality": max(r["quality"] for r in kept),
            "completed": len(kept),
            "stopped": len(rows) - len(kept),
            "steps_trained": sum(r["steps"] for r in rows),
            "worker_seconds": asha_ws,
        },
        "quality_gap": max(r["grid_quality"] for r in rows) - max(r["quality"] for r in kept),
        "compute_ratio_steps": sum(r["steps"] for r in rows) / (steps * len(rows)),
        "compute_ratio_worker_seconds": asha_ws / grid_ws,
        "trials": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--grace", type=int, default=50)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument("--out", default="bench/results/asha_vs_grid.json")
    args = parser.parse_args()
    result = replay(Path(args.grid), args.grace, args.reduction_factor)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=2))


if __name__ == "__main__":
    main()
