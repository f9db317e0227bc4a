"""Epoch time with the teacher-output cache against recomputing the teacher, measured as a
ratio in one script run.

    python -m bench.teacher_cache [--steps 96] [--rows 2000] [--out bench/results/teacher_cache.json]

The job is the sweep example's base (examples/sweep_depth_width.yaml: the packaged
all-MiniLM-L6-v2 teacher, SST-2 + STS-B sentences, hidden MSE on uniformly mapped layers plus
the pooled losses) with a 3 x 384 student on 2 Ray Train workers (DeepSpeed ZeRO-2). The
cache is built once; then the same job runs with and without it, alternating, twice each.
Epoch time = training rows / the run's measured samples/s (warm-up steps excluded), so Ray
start-up, evaluation and export do not count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cluster.storage import LocalStorage


def _spec(steps: int, rows: int):
    from jobs.spec import JobSpec
    from jobs.sweep_check import check_sweep
    from jobs.sweep_spec import apply_params, load_sweep

    sweep = load_sweep("examples/sweep_depth_width.yaml")
    sweep = sweep.model_copy(
        update={
            "space": {
                "student.layers": sweep.space["student.layers"].model_copy(update={"grid": [3]})
            }
        }
    )
    base = check_sweep(sweep).base
    raw = apply_params(
        base,
        {
            "student": {"layers": 3, "hidden": 384, "heads": 12, "ffn": 1536},
            "training": {
                "steps": steps,
                "log_every": steps // 4,
                "eval_every": steps,
                "checkpoint_every": steps,
            },
            "data": {"max_train_samples": rows},
            "evaluation": {"max_sts_pairs": 200, "throughput_texts": 64, "throughput_rounds": 1},
        },
    )
    return JobSpec.model_validate(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/teacher_cache.json")
    args = parser.parse_args()

    from cluster.launch import ensure_ray
    from cluster.teacher_cache import prepare_cache
    from distill_core.teacher_cache import CachePlan
    from jobs.preflight import preflight
    from jobs.run import run_job

    spec = preflight(_spec(args.steps, args.rows))
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        storage = LocalStorage(tmp)
        plan = CachePlan(layers=(2, 4, 6), pooled=True)  # uniform map of 3 student layers
        cache = prepare_cache(spec, storage, plan)
        ensure_ray(spec)
        runs: dict[str, list[dict]] = {"cache": [], "recompute": []}
        for repeat in range(args.repeats):
            for mode in ("recompute", "cache"):
                started = time.perf_counter()
                report = run_job(
                    spec,
                    f"{tmp}/{mode}{repeat}",
                    teacher_cache=cache if mode == "cache" else None,
                    cache_bypass="benchmark baseline" if mode == "recompute" else None,
                )
                last = json.loads(
                    Path(f"{tmp}/{mode}{repeat}/metrics.jsonl").read_text().splitlines()[-1]
                )
                sps = report["training"]["samples_per_s"]
                runs[mode].append(
                    {
                        "samples_per_s": sps,
                        "epoch_s": args.rows / sps,
                        "ms_teacher": last["ms_teacher"],
                        "ms_forward": last["ms_forward"],
                        "ms_backward": last["ms_backward"],
                        "ms_step": last["ms_step"],
                        "job_wall_s": time.perf_counter() - started,
                    }
                )
                print(f"[bench] {mode} #{repeat}: {runs[mode][-1]}", flush=True)
    epoch = {mode: statistics.mean(r["epoch_s"] for r in rs) for mode, rs in runs.items()}
    result = {
        "benchmark": "teacher_cache",
        "rows": args.rows,
        "steps": args.steps,
        "student": "3 x 384 (width_slice), 2 workers ZeRO-2, batch 32 per worker",
        "cache": {k: cache[k] for k in ("key", "rows", "build_s", "size_mib")},
        "runs": runs,
        "epoch_s": epoch,
        "speedup": epoch["recompute"] / epoch["cache"],
        "break_even_epochs": cache["build_s"] / max(epoch["recompute"] - epoch["cache"], 1e-9),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("epoch_s", "speedup", "break_even_epochs")}, indent=2))


if __name__ == "__main__":
    main()
