"""The environment of Ray Train workers, shared by local runs and submitted jobs. Importing
it is cheap (no Ray, no DeepSpeed): `distill submit` builds a job's `runtime_env` from it."""

from __future__ import annotations

from jobs.spec import JobSpec


def worker_env(spec: JobSpec) -> dict[str, str]:
    threads = str(spec.scaling.cpus_per_worker)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        # Plain prints reach the driver once; Ray's print patch would echo them twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    if spec.scaling.gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env
