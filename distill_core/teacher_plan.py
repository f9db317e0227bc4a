"""Where the teacher's weights live on the training workers, decided before Ray starts.

- `replicate`: every worker holds the whole teacher (fastest forward, no communication).
- `zero3`: each of the N workers holds 1/N of the teacher's parameters (DeepSpeed ZeRO-3,
  `cluster/teacher_on_worker.py`); the forward gathers one layer at a time, prefetching the
  next, so a worker needs its partition plus about one gathered layer.

`teacher.partition: auto` replicates a teacher whose parameters take at most half of a
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


@dataclass(frozen=True)
class Placement:
    partition: str  # replicate | zero3
    dtype: str  # fp32 | bf16 | fp16
    parameter_bytes: int  # the whole teacher at `dtype`
    per_worker_bytes: int  # resident teacher parameter bytes per worker (+ one gathered unit)
    worker_memory_bytes: int | None
    reason: str

    def describe(self, workers: int) -> str:
        where = (
            "every worker holds it whole"
            if self.partition == "replicate"
            else (f"partitioned over {workers} workers with ZeRO-3")
        )
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


def footprint(config: PretrainedConfig, auto_class) -> TeacherFootprint:
    """Count an architecture's parameters without allocating them (meta device)."""
    model = meta_model(config, auto_class)
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
    spec: JobSpec, teacher: TeacherFootprint, worker_memory: int | None
) -> Placement:
    """The teacher's dtype and partition for this spec; one-line `SpecError`s for a dtype
    the hardware cannot run or a placement that cannot fit a worker."""
    t, workers = spec.teacher, spec.scaling.num_workers
    dtype = t.dtype or spec.deepspeed.precision
    if dtype == "fp16" and spec.scaling.gpus_per_worker == 0:
        raise SpecError("teacher.dtype: fp16 needs a GPU; use fp32 or bf16 on the CPU")
    size = DTYPE_BYTES[dtype]
    whole = teacher.parameters * size
    partitioned = math.ceil(teacher.parameters / workers) * size + teacher.largest_gather * size
    budget = None if worker_memory is None else COMFORT * worker_memory
    mode, reason = t.partition, "as set in teacher.partition"
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
            f"teacher.partition: replicate puts the whole teacher ({gb(whole)} at {dtype}) on "
            f"every worker, more than half of a worker's {gb(worker_memory)}; use "
            "teacher.partition: zero3 (with scaling.num_workers > 1) or a smaller teacher.dtype"
        )
    if worker_memory is not None and mode == "zero3" and partitioned > ZERO3_SHARE * worker_memory:
        raise SpecError(
            f"scaling.num_workers: {workers} workers leave each a 1/{workers} teacher partition "
            f"plus one gathered layer of {gb(partitioned)} at {dtype}, more than "
            f"{ZERO3_SHARE:.0%} of a worker's {gb(worker_memory)}; add workers, memory or a "
            "smaller teacher.dtype"
        )
    return Placement(
        partition=mode,
        dtype=dtype,
        parameter_bytes=whole,
        per_worker_bytes=whole if mode == "replicate" else partitioned,
        worker_memory_bytes=worker_memory,
        reason=reason,
    )
