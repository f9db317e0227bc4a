"""The environment of Ray Train workers, shared by local runs and submitted jobs. Importing
it is cheap (no Ray, no DeepSpeed): `distill submit` builds a job's `runtime_env` from it."""

from __future__ import annotations

import os
import sys

from distill.core.spec import JobSpec


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
    if spec.teacher.placement == "zero3":
        # A partitioned teacher allocates and frees every layer it gathers, every forward.
        # glibc serves blocks below its mmap threshold (which grows to 32 MiB) from the heap
        # and keeps them when freed; between the partitions and the gathered layers the heap
        # fragments and stays GiBs above the live data (1.1B fp32 teacher, 2 workers: peak
        # RSS 5.08 GiB with glibc's default, 3.47 GiB with this; bench/teacher_memory.py).
        # Above 1 MiB every block is its own mapping, returned to the OS when freed.
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
        # ...so each of those blocks is fresh memory the kernel faults in page by page. With
        # this, PyTorch's CPU allocator asks for transparent huge pages (madvise) for its
        # large blocks: one fault per 2 MiB instead of 512. Teacher forward 22.6 s -> 8.7 s
        # per step (1.1B fp32, 2 workers; bench/zero3_forward.py). No effect where the
        # kernel's THP setting is `never`.
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


# Set by `distill submit` (jobs/staging.py) in a submitted job's runtime_env: the config's
# relative paths point into the job's working dir, which Ray unpacks on every node, each at
# its own path.
SUBMITTED_JOB_ENV = "DISTILL_SUBMITTED_JOB"
JOB_MARKER = "job/.distill-job"  # staged by distill submit; finds the working dir on a node
BUNDLED_DIR = "job/files/"  # where distill submit puts the local files a config names


def job_working_dir() -> str | None:
    """This node's copy of the submitted job's working dir, or None outside one. Ray puts
    it on PYTHONPATH; Ray Train then moves the workers' cwd elsewhere."""
    if not os.environ.get(SUBMITTED_JOB_ENV):
        return None
    for entry in [os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep), *sys.path]:
        if entry and os.path.isfile(os.path.join(entry, JOB_MARKER)):
            return entry
    return None


def in_job_working_dir(spec: JobSpec) -> JobSpec:
    """The spec with its bundled files found in this node's copy of the job's working dir:
    in its path fields (`JobSpec.map_paths`), relative paths, and absolute ones resolved on
    another node (the driver's), are rebased there. Unchanged outside a submitted job.
    Called where a spec is used: the driver and Tune trials (run_job) and the Train workers."""
    base = job_working_dir()
    if base is None:
        return spec

    def rebase(path: str, field: str) -> str:
        if os.path.isabs(path) and os.path.exists(path):
            return path
        if not os.path.isabs(path):
            here = os.path.join(base, path)
        elif f"/{BUNDLED_DIR}" in path:
            here = os.path.join(base, BUNDLED_DIR + path.split(f"/{BUNDLED_DIR}", 1)[1])
        else:
            return path
        return here if os.path.exists(here) else path

    return spec.map_paths(rebase)
