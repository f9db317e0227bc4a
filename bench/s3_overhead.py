"""Upload overhead of S3 storage: the same small job with its run folder on local disk and
in S3 (a moto server on loopback), timed in one script run, reported as a ratio.

    python bench/s3_overhead.py [--steps 8] [--out bench/results/s3_overhead.json]

Both runs: the packaged teacher, a 2-layer student, 2 Ray Train workers with DeepSpeed
ZeRO-2, a checkpoint every 4 steps (model + optimizer shards of both ranks) and the final
export and report. Ray is started once before either timed run; the local run goes first.
Timed: `run_job` end to end (training, checkpoint uploads, export upload, evaluation).
Loopback S3 measures the cost of the S3 code path (pyarrow multipart uploads, boto3
round trips, the download of the final checkpoint), not network bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _job(steps: int, extra: list[str]):
    from distill.core.spec_loading import load_spec

    return load_spec(
        None,
        [
            "student.layers=2",
            f"training.steps={steps}",
            "training.batch_size=8",
            "training.log_every=2",
            "training.eval_every=4",
            "training.checkpoint_every=4",
            "training.warmup_steps=1",
            "data.max_length=32",
            "data.max_train_samples=400",
            "data.max_eval_samples=32",
            "evaluation.throughput_texts=32",
            "evaluation.throughput_rounds=1",
            *extra,
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="bench/results/s3_overhead.json")
    args = parser.parse_args()

    import logging

    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    from distill.cluster.launch import worker_env
    from distill.core.spec import JobSpec
    from distill.jobs.run import run_job

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    ray.init(num_cpus=2, runtime_env={"env_vars": worker_env(JobSpec())}, logging_level="WARNING")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, output, extra in (
            ("local", str(Path(tmp) / "local"), []),
            (
                "s3",
                "s3://bench/runs/s3",
                [f"output.s3.endpoint_url={endpoint}", "output.s3.addressing_style=path"],
            ),
        ):
            started = time.perf_counter()
            report = run_job(_job(args.steps, extra), output)
            results[name] = {
                "wall_s": time.perf_counter() - started,
                "steps": report["training"]["steps"],
                "samples_per_s": report["training"]["samples_per_s"],
            }
            print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
    stored = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="bench")
    ray.shutdown()
    server.stop()
    out = {
        "steps": args.steps,
        "checkpoints": args.steps // 4,
        "zero_stage": 2,
        "workers": 2,
        "bucket_bytes": sum(o["Size"] for o in stored.get("Contents", [])),
        "local": results["local"],
        "s3": results["s3"],
        "ratio_s3_vs_local": results["s3"]["wall_s"] / results["local"]["wall_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
