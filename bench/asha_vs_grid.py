"""ASHA against the full grid on the same space of students of the packaged teacher: the
best dev quality each finds and the worker-seconds each spends, in one script run.

    python -m bench.asha_vs_grid [--steps 200] [--out bench/results/asha_vs_grid.json]

The space is examples/sweep_depth_width.yaml's base with layers {1, 2, 3, 4} x width
{384 (12 heads), 192 (6 heads)}: 8 students, every trial a 2-worker ZeRO-2 distillation
scored on STS-B dev. The grid runs every trial to the end; ASHA (time attribute: training
step, metric: in-training STS-B dev Spearman) stops the weak ones at its rungs. Worker-
seconds = each trial's wall time x its Train workers (the resources it held).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def _sweep(steps: int, scheduler: str, grace: int):
    from distill.cluster.sweep_spec import ParamSpec, load_sweep

    sweep = load_sweep(
        "examples/sweep_depth_width.yaml",
        [
            f"base.training.steps={steps}",
            f"base.training.eval_every={grace}",
            f"base.training.checkpoint_every={steps}",
            f"base.training.log_every={grace}",
            "base.data.max_train_samples=4000",
            "base.evaluation.throughput_texts=256",
            f"scheduler.kind={scheduler}",
            f"scheduler.grace_period={grace}",
            "scheduler.reduction_factor=2",
        ],
    )
    space = {
        "student.layers": ParamSpec(grid=[1, 2, 3, 4]),
        "student": ParamSpec(
            grid=[
                {"hidden": 384, "heads": 12, "ffn": 1536},
                {"hidden": 192, "heads": 6, "ffn": 768},
            ]
        ),
    }
    return sweep.model_copy(update={"space": space})


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
            {"params": t["params"], "status": t["status"], **t["metrics"]} for t in report["trials"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--grace", type=int, default=50)
    parser.add_argument("--out", default="bench/results/asha_vs_grid.json")
    parser.add_argument("--work", help="sweep folders (default: a temporary folder)")
    args = parser.parse_args()

    from distill.jobs.tune import run_sweep

    result = {"benchmark": "asha_vs_grid", "steps": args.steps, "grace": args.grace}
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        work = Path(args.work or tmp)
        for name, scheduler in (("grid", "fifo"), ("asha", "asha")):
            sweep = _sweep(args.steps, scheduler, args.grace)
            report = run_sweep(sweep, str(work / name))
            workers = sweep.base["scaling"]["num_workers"]
            result[name] = _summary(report, workers)
            print(
                f"[bench] {name}: {json.dumps({k: v for k, v in result[name].items() if k != 'trials'})}",
                flush=True,
            )
    g, a = result["grid"], result["asha"]
    result["quality_gap"] = g["best_quality"] - a["best_quality"]
    result["compute_ratio"] = a["worker_seconds"] / g["worker_seconds"]
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("quality_gap", "compute_ratio")}, indent=2))


if __name__ == "__main__":
    main()
