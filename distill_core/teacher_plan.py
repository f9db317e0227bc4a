"""Where the teacher's weights live on the training workers, decided before Ray starts.

- `replicate`: every worker holds the whole teacher (fastest forward, no communication).
- `zero3`: each of the N workers holds 1/N of the teacher's parameters (DeepSpeed ZeRO-3,
  `cluster/teacher_on_worker.py`); the forward gathers one layer at a time, prefetching the
  next, so a worker needs its partition plus about one gathered layer.
- `service`: no worker holds it; one Ray Serve deployment (`cluster/teacher_service.py`)
  answers every worker's (and every sweep trial's) requests. Only ever chosen explicitly.

`teacher.placement: auto` replicates a teacher whose parameters take at most half of a
worker's memory (`COMFORT`; the other half is for the student, its optimizer state,
activations and the framework) and partitions a bigger one over more than one worker; a
partition plus one gathered layer may take up to `ZERO3_SHARE` (80%) of a worker's memory. A
worker's memory is `scaling.memory_per_worker_gb`, else this machine's memory shared by the
workers of a local run, else (a running cluster at `RAY_ADDRESS`) the smallest share of Ray's
`memory` resource that a worker gets on any alive node that can host one (`worker_memory_on_nodes`);
when none of these is known `auto` replicates. The same estimate refuses a placement that
cannot fit, naming the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from distill.core.spec import JobSpec, SpecError
from distill.core.student import layer_stacks

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMFORT = 0.5  # a replicated teacher's share of a worker's memory ("fits comfortably")
ZERO3_SHARE = 0.8  # a partition plus one gathered layer may take this much (the floor)


@dataclass(frozen=True)
class TeacherFootprint:
    """Parameter counts of a teacher architecture: all of them, and the largest unit a
    partitioned forward gathers at once (a layer block, or a single tensor such as the
    token-embedding table)."""

    parameters: int
    largest_gather: int
    largest_layer: int = 0  # the largest layer block (a decoder layer), parameters


# A Train worker's resident memory before any model exists: the interpreter with torch, Ray
# Train, DeepSpeed and transformers imported, gloo up. Measured: 0.61 GiB at the `started`
# phase of every worker of the 1.1B-teacher benchmark (cluster.worker_memory, 2026-12-07).
RUNTIME_BYTES = int(0.61 * 2**30)
# Per trained parameter: fp32 weights (4), gradients (4), DeepSpeed's fp32 flat copy and
# gradient buckets (8), Adam's two moments (8), and the copy a checkpoint save makes; ZeRO
# partitions only part of this, so it is counted whole (an upper side on purpose).
STUDENT_BYTES_PER_PARAMETER = 24
# Per token of a batch: the logits of student and teacher over the vocabulary with their
# softmax, divergence and gradient (about ten fp32 copies), or the hidden states of every
# layer (an encoder).
LOGIT_COPIES = 10


@dataclass(frozen=True)
class PeakEstimate:
    """Preflight's estimate of one worker's peak resident memory, by term (bytes)."""

    runtime: int
    teacher: int  # the whole teacher, or a partition plus the gather window
    student: int  # weights, gradients, optimizer state, checkpoint copy
    activations: int

    @property
    def total(self) -> int:
        return self.runtime + self.teacher + self.student + self.activations

    def describe(self) -> str:
        return (
            f"{gb(self.total)} (runtime {gb(self.runtime)} + teacher {gb(self.teacher)} + "
            f"student {gb(self.student)} + activations {gb(self.activations)})"
        )


def estimate_worker_peak(
    spec: JobSpec, teacher: TeacherFootprint, config, partition: str, dtype: str, student: int
) -> PeakEstimate:
    """A worker's peak resident memory from the same terms the worker records: the runtime,
    the teacher (whole when replicated; else its 1/N partition plus the gather window, the
    largest gathered unit and the prefetch bucket, released after each forward), the student
    with its optimizer state, and the batch's activations. `student`: its parameters."""
    size = DTYPE_BYTES[dtype]
    workers = spec.scaling.num_workers
    if partition == "replicate":
        teacher_bytes = teacher.parameters * size
    elif partition == "service":  # the workers hold none of it (a Ray Serve deployment does)
        teacher_bytes = 0
    else:
        window = teacher.largest_gather + min(
            spec.teacher.zero3.prefetch_bucket_size, spec.teacher.zero3.max_live_parameters
        )
        teacher_bytes = (math.ceil(teacher.parameters / workers) + window) * size
    tokens = spec.training.batch_size * spec.data.max_length
    width = getattr(config, "vocab_size", 0) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0) or 0
    activations = tokens * 4 * max(LOGIT_COPIES * width, 4 * hidden * (layers + 1))
    return PeakEstimate(
        RUNTIME_BYTES, teacher_bytes, student * STUDENT_BYTES_PER_PARAMETER, activations
    )


@dataclass(frozen=True)
class Placement:
    partition: str  # replicate | zero3 | service
    dtype: str  # fp32 | bf16 | fp16
    parameter_bytes: int  # the whole teacher at `dtype`
    per_worker_bytes: int  # resident teacher parameter bytes per worker (+ one gathered unit)
    worker_memory_bytes: int | None
    reason: str
    estimate: PeakEstimate | None = None  # the worker's whole peak, by term

    def describe(self, workers: int) -> str:
        where = {
            "replicate": "every worker holds it whole",
            "zero3": f"partitioned over {workers} workers with ZeRO-3",
            "service": "one Ray Serve deployment the workers query; none in the workers",
        }[self.partition]
        return (
            f"teacher: {self.partition} ({where}), {self.dtype}, {gb(self.per_worker_bytes)} "
            f"of parameters per worker (whole teacher {gb(self.parameter_bytes)}; {self.reason})"
        )


def gb(n: int | float) -> str:
    """Bytes for a message: GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def meta_model(config: PretrainedConfig, auto_class) -> torch.nn.Module:
    """The architecture with every tensor on the meta device (shapes, no memory)."""
    with torch.device("meta"):
        return auto_class.from_config(config)


def footprint(
    config: PretrainedConfig, auto_class, model: torch.nn.Module | None = None
) -> TeacherFootprint:
    """Count an architecture's parameters without allocating them (meta device; `model`:
    one already built by `meta_model`)."""
    model = model if model is not None else meta_model(config, auto_class)
    total = sum(p.numel() for p in model.parameters())
    blocks = [
        sum(p.numel() for p in block.parameters()) for s in layer_stacks(model) for block in s
    ]
    largest_tensor = max((p.numel() for p in model.parameters()), default=0)
    return TeacherFootprint(total, max([largest_tensor, *blocks]), max(blocks, default=0))


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def worker_memory_bytes(spec: JobSpec, *, local: bool) -> int | None:
    """A worker's memory: the spec's, else (a local run) this machine's over the workers."""
    sc = spec.scaling
    if sc.memory_per_worker_gb is not None:
        return int(sc.memory_per_worker_gb * 2**30)
    if local:
        return machine_memory_bytes() // sc.num_workers
    return None


def worker_memory_on_nodes(
    nodes: list[dict[str, float]], cpus_per_worker: float, gpus_per_worker: float
) -> int | None:
    """A worker's memory on a running cluster, from each alive node's total resources (Ray's
    `CPU`, `GPU` and `memory` in bytes): a node's memory shared by the workers its CPUs (and
    GPUs) can host, the smallest over the nodes that can host one; None when none can."""
    shares = []
    for node in nodes:
        slots = math.floor(node.get("CPU", 0) / cpus_per_worker) if cpus_per_worker else 1
        if gpus_per_worker:
            slots = min(slots, math.floor(node.get("GPU", 0) / gpus_per_worker))
        if slots >= 1 and node.get("memory", 0) > 0:
            shares.append(int(node["memory"] // slots))
    return min(shares) if shares else None


def resolve_placement(
    spec: JobSpec,
    teacher: TeacherFootprint,
    worker_memory: int | None,
    *,
    config=None,
    student_parameters: int = 0,
) -> Placement:
    """The teacher's dtype and partition for this spec; one-line `SpecError`s for a dtype
    the hardware cannot run or a placement that cannot fit a worker: the teacher's share
    (half a worker replicated, 80% partitioned), then the whole worker's estimated peak
    (`estimate_worker_peak`; `config`: the teacher's, without which nothing is estimated;
    `student_parameters`: the student's)."""
    t, workers = spec.teacher, spec.scaling.num_workers
    dtype = t.dtype or spec.deepspeed.precision
    if dtype == "fp16" and spec.scaling.gpus_per_worker == 0:
        raise SpecError("teacher.dtype: fp16 needs a GPU; use fp32 or bf16 on the CPU")
    size = DTYPE_BYTES[dtype]
    whole = teacher.parameters * size
    partitioned = math.ceil(teacher.parameters / workers) * size + teacher.largest_gather * size
    budget = None if worker_memory is None else COMFORT * worker_memory
    mode, reason = t.placement, "as set in teacher.placement"
    if mode == "auto":
        if budget is None or whole <= budget:
            mode = "replicate"
            reason = (
                f"within half of a worker's {gb(worker_memory)}"
                if worker_memory is not None
                else "worker memory unknown"
            )
        elif workers == 1:
            mode, reason = "replicate", "one worker: nothing to partition over"
        else:
            mode, reason = "zero3", f"more than half of a worker's {gb(worker_memory)}"
    if budget is not None and mode == "replicate" and whole > budget:
        raise SpecError(
            f"teacher.placement: replicate puts the whole teacher ({gb(whole)} at {dtype}) on "
            f"every worker, more than half of a worker's {gb(worker_memory)}; use "
            "teacher.placement: zero3 (with scaling.num_workers > 1) or a smaller teacher.dtype"
        )
    if worker_memory is not None and mode == "zero3" and partitioned > ZERO3_SHARE * worker_memory:
        raise SpecError(
            f"scaling.num_workers: {workers} workers leave each a 1/{workers} teacher partition "
            f"plus one gathered layer of {gb(partitioned)} at {dtype}, more than "
            f"{ZERO3_SHARE:.0%} of a worker's {gb(worker_memory)}; add workers, memory or a "
            "smaller teacher.dtype"
        )
    estimate = None  # without the teacher's config there is no activation term to add
    if config is not None:
        estimate = estimate_worker_peak(spec, teacher, config, mode, dtype, student_parameters)
    if estimate is not None and worker_memory is not None and estimate.total > worker_memory:
        field = (
            "scaling.memory_per_worker_gb"
            if spec.scaling.memory_per_worker_gb is not None
            else "teacher.placement"
        )
        raise SpecError(
            f"{field}: a worker's peak is estimated at {estimate.describe()} with teacher "
            f"{mode} at {dtype}, more than its {gb(worker_memory)}; add workers or memory, "
            "use teacher.placement: zero3, or a smaller student or batch"
        )
    return Placement(
        partition=mode,
        dtype=dtype,
        parameter_bytes=whole,
        per_worker_bytes={"replicate": whole, "zero3": partitioned}.get(mode, 0),
        worker_memory_bytes=worker_memory,
        reason=reason,
        estimate=estimate,
    )
