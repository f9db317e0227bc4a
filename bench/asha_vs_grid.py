"""ASHA against the full grid on `examples/sweep_depth_width.yaml`'s space (layers {2, 3, 4}
x width {384, 256, 192}: 9 students, each trial a real 2-worker ZeRO-2 distillation scored on
STS-B dev), live, in one script run: the best quality each finds and the worker-seconds each
spends.

    python -m bench.asha_vs_grid [--steps 200] [--grace 25] [--reduction-factor 3]
        [--runs grid asha_ordered] [--work DIR] [--out bench/results/asha_vs_grid.json]

Runs (each a `distill tune` sweep through `run_sweep`, one trial at a time on 2 CPUs):
  grid          every trial to the last step (FIFO)
  asha          ASHA (time attribute: training step; metric: in-training STS-B dev Spearman
                every `grace` steps), trials started in the order the grid is written
  asha_ordered  the same ASHA, trials started best first by quality before training
                (`search.order: init_quality`, scored in the driver)
Worker-seconds = each trial's Tune-measured wall time (start to its last result) x its 2
Train workers; `asha_ordered` also pays for its ordering: the driver's scoring seconds x 2
(it holds the machine's 2 cores). When the grid ran, ASHA as written is also replayed on the
grid's curves (`bench/asha_replay.py`) with the same grace and reduction factor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RUNS = {
    "grid": ("fifo", "as_written"),
    "asha": ("asha", "as_written"),
    "asha_ordered": ("asha", "init_quality"),
}


def _sweep(steps: int, grace: int, rf: float, scheduler: str, order: str):
    from distill.cluster.sweep_spec import load_sweep

    return load_sweep(
        "examples/sweep_depth_width.yaml",
        [
            f"base.training.steps={steps}",
            f"base.training.eval_every={grace}",
            f"base.training.checkpoint_every={steps}",
            f"base.training.log_every={grace}",
            f"scheduler.kind={scheduler}",
            f"scheduler.grace_period={grace}",
            f"scheduler.reduction_factor={rf}",
            f"search.order={order}",
        ],
    )


def _ordering_seconds(sweep) -> float:
    """What the driver spends ranking the students (the sweep does the same before Ray)."""
    from distill.jobs.sweep_check import check_sweep
    from distill.jobs.sweep_order import init_quality_order

    started = time.perf_counter()
    init_quality_order([(p, s.spec) for p, s in check_sweep(sweep).combinations])
    return time.perf_counter() - started


def _summary(report: dict, workers: int) -> dict:
    done = [t for t in report["trials"] if t["status"] == "completed"]
    best = max(done, key=lambda t: t["metrics"]["quality"])
    return {
        "best_quality": best["metrics"]["quality"],
        "best_trial": best["params"],
        "completed": len(done),
        "stopped": report["counts"]["stopped"],
        "worker_seconds": sum(t["metrics"].get("time_total_s", 0.0) for t in report["trials"])
        * workers,
        "steps_trained": sum(t["metrics"].get("step", 0) for t in report["trials"]),
        "wall_s": report["sweep"]["wall_time_s"],
        "trials": [
            {k: t[k] for k in ("trial_id", "params", "status", "metrics")} for t in report["trials"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--grace", type=int, default=25)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["grid", "asha_ordered"])
    parser.add_argument("--out", default="bench/results/asha_vs_grid.json")
    parser.add_argument("--work", help="sweep folders (default: a temporary folder)")
    args = parser.parse_args()

    from distill.jobs.tune import run_sweep

    out = Path(args.out)
    result = {
        "benchmark": "asha_vs_grid",
        "method": "live sweeps (distill tune), one trial at a time",
        "space": "examples/sweep_depth_width.yaml",
        "steps_per_trial": args.steps,
        "grace": args.grace,
        "reduction_factor": args.reduction_factor,
    }
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        work = Path(args.work or tmp)
        for name in args.runs:
            scheduler, order = RUNS[name]
            sweep = _sweep(args.steps, args.grace, args.reduction_factor, scheduler, order)
            report = run_sweep(sweep, str(work / name))
            workers = sweep.base["scaling"]["num_workers"]
            result[name] = _summary(report, workers)
            if order == "init_quality":
                seconds = _ordering_seconds(sweep)
                result[name]["ordering_seconds"] = seconds
                result[name]["worker_seconds"] += 2 * seconds
            print(
                f"[bench] {name}: "
                f"{json.dumps({k: v for k, v in result[name].items() if k != 'trials'})}",
                flush=True,
            )
            out.write_text(json.dumps(result, indent=2))
        if "grid" in result:
            from bench.asha_replay import replay

            replayed = replay(work / "grid", args.grace, args.reduction_factor)
            result["asha_replayed_on_grid"] = {
                k: replayed[k]
                for k in (
                    "asha",
                    "quality_gap",
                    "compute_ratio_steps",
                    "compute_ratio_worker_seconds",
                )
            }
            result["asha_replayed_on_grid"]["trials"] = replayed["trials"]
    grid = result.get("grid")
    for name in ("asha", "asha_ordered"):
        if grid and name in result:
            result[f"{name}_vs_grid"] = {
                "quality_gap": grid["best_quality"] - result[name]["best_quality"],
                "compute_ratio_worker_seconds": result[name]["worker_seconds"]
                / grid["worker_seconds"],
                "compute_ratio_steps": result[name]["steps_trained"] / grid["steps_trained"],
            }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k.endswith("_vs_grid")}, indent=2))


if __name__ == "__main__":
    main()
