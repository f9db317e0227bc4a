"""Start (or join) Ray and run the distillation as a Ray Train `TorchTrainer`.

Checkpoints go to `<run storage>/train/checkpoint_*`; re-running with the same storage and
name makes Ray Train restore the latest checkpoint into the worker loop.
"""

from __future__ import annotations

import json
import os
import socket

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from distill.cluster.manifest_callback import CheckpointManifest, ControllerFence
from distill.cluster.pipeline import WorkerInputs
from distill.cluster.report_log import ReportLog
from distill.cluster.run_files import TRAIN_DIR
from distill.cluster.storage import Storage
from distill.cluster.worker_env import worker_env
from distill.cluster.worker_loop import train_loop_per_worker
from distill.core.spec import JobSpec


def _submitted_job_env() -> dict[str, str]:
    """The env_vars of the Ray Jobs submission this driver runs in (`distill submit`), else {}.
    Ray refuses a ray.init runtime_env that sets a variable the job already sets."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {}


def ensure_ray(spec: JobSpec) -> None:
    """Join `RAY_ADDRESS` if set, else start a local single-node Ray."""
    if ray.is_initialized():
        return
    job_env = _submitted_job_env()
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or None,  # an empty variable means unset
        runtime_env={"env_vars": {k: v for k, v in worker_env(spec).items() if k not in job_env}},
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )


class ClusterUnreachable(Exception):
    """Nothing answers at `RAY_ADDRESS` (Ray itself would retry for minutes)."""


def cluster_node_resources() -> list[dict[str, float]] | None:
    """Total resources of each alive node of the running cluster at `RAY_ADDRESS`, read by a
    driver connection that reserves nothing and is closed again; None when there is no
    address or the cluster cannot be read. `ClusterUnreachable` when nothing listens there."""
    address = os.environ.get("RAY_ADDRESS")
    if not address or address.startswith(("http://", "https://")):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise ClusterUnreachable(f"cannot reach a Ray cluster at {address} ({exc})") from None
    joined = not ray.is_initialized()
    try:
        if joined:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - an unreadable cluster leaves the memory unknown
        return None
    finally:
        if joined and ray.is_initialized():
            ray.shutdown()


def fit(
    inputs: WorkerInputs,
    storage: Storage,
    *,
    name: str = TRAIN_DIR,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run (or resume) a job's stages as one Ray Train run under `<storage>/<name>`: one
    worker group trains every stage (`cluster.worker_loop`). callbacks: extra Ray Train
    callbacks (a sweep trial's `TuneReportCallback`)."""
    spec = inputs.stages[inputs.start].spec
    ensure_ray(spec)
    sc = spec.scaling
    storage_path, filesystem = storage.ray_storage()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"inputs": inputs},
        torch_config=TorchConfig(backend="nccl" if sc.gpus_per_worker > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": sc.cpus_per_worker,
                **({"GPU": sc.gpus_per_worker} if sc.gpus_per_worker else {}),
                **(
                    {"memory": int(sc.memory_per_worker_gb * 2**30)}
                    if sc.memory_per_worker_gb
                    else {}
                ),
            },
            placement_strategy=sc.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.training.keep_checkpoints
            ),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            # COMPLETE.json, written once all ranks uploaded; reports.jsonl: steps, failures
            callbacks=[
                ControllerFence(inputs.fence, spec.output.s3),  # first: stops a fenced-out run
                CheckpointManifest(inputs.fence, spec.output.s3),
                ReportLog(),
                *(callbacks or []),
            ],
        ),
    )
    return trainer.fit()
