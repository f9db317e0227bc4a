"""The frozen teacher on a training worker, replicated or partitioned with ZeRO-3.

`zero3` (see `distill.core.teacher_plan`): the teacher is loaded under a live
`HfDeepSpeedConfig` of stage 3, so transformers builds it inside `deepspeed.zero.Init` and
reads the checkpoint shards straight into each rank's 1/N partition (no rank materialises
the whole model); it is then wrapped in a DeepSpeed engine with stage 3 and no optimizer,
whose hooks gather each layer's parameters for its forward (prefetching the next ones,
`teacher.zero3.*`) and release them after. It stays frozen, outside the student's engine and
optimizer; its fingerprint is computed over every rank's partitions.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist

from distill.core.family_interface import ModelFamily
from distill.core.spec import JobSpec
from distill.core.teacher_plan import TORCH_DTYPES


@dataclass
class PlacedTeacher:
    """The teacher module the family calls, and how it is placed on this rank."""

    module: torch.nn.Module
    # replicate | zero3 | cache (not loaded: a teacher-output cache serves its outputs and
    # `module` is a weightless skeleton, `distill.core.lazy_teacher`)
    partition: str
    engine: object | None = None  # the stage-3 inference engine (zero3); keeps the hooks alive

    @property
    def partitioned(self) -> bool:
        return self.partition == "zero3"

    def local_parameters(self) -> int:
        """Teacher parameters resident on this rank (its partition under ZeRO-3)."""
        if self.partition == "cache":
            return 0
        if self.partitioned:
            return sum(p.ds_tensor.numel() for p in self.module.parameters())
        return sum(p.numel() for p in self.module.parameters())

    def total_parameters(self) -> int:
        if self.partitioned:
            return sum(p.ds_numel for p in self.module.parameters())
        return sum(p.numel() for p in self.module.parameters())

    def fingerprint(self) -> str:
        """sha256 over every parameter's bytes (every rank's partitions under ZeRO-3, in rank
        order): proves the teacher was never modified. A collective under ZeRO-3."""
        if self.partition == "cache":
            return "not loaded (teacher-output cache)"
        digest = hashlib.sha256()
        for name, param in sorted(self.module.named_parameters()):
            data = param.ds_tensor if self.partitioned else param
            digest.update(name.encode())
            digest.update(_tensor_bytes(data))
        for name, buffer in sorted(self.module.named_buffers()):
            digest.update(name.encode())
            digest.update(_tensor_bytes(buffer))
        if not self.partitioned:
            return digest.hexdigest()
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, digest.hexdigest())
        return hashlib.sha256("".join(parts).encode()).hexdigest()


def teacher_deepspeed_config(spec: JobSpec) -> dict:
    """Stage 3, no optimizer: the partitioned teacher's inference engine."""
    dtype, z = spec.teacher.dtype, spec.teacher.zero3
    return {
        "train_micro_batch_size_per_gpu": spec.training.batch_size,
        "zero_optimization": {
            "stage": 3,
            "stage3_prefetch_bucket_size": z.prefetch_bucket_size,
            "stage3_max_live_parameters": z.max_live_parameters,
            "stage3_max_reuse_distance": z.max_reuse_distance,
            "stage3_param_persistence_threshold": z.param_persistence_threshold,
        },
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 10**9,
    }


def place_teacher(
    spec: JobSpec, family: ModelFamily, folder: str, device: torch.device
) -> PlacedTeacher:
    """Load the frozen teacher in `folder` as the resolved `teacher.partition` says."""
    dtype = TORCH_DTYPES[spec.teacher.dtype]
    if spec.teacher.partition == "replicate":
        module = family.load_model(folder, seed=spec.training.seed, dtype=dtype)
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        release_freed_memory()
        return PlacedTeacher(module, "replicate")
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    config = teacher_deepspeed_config(spec)
    zero3 = HfDeepSpeedConfig(config)  # alive: from_pretrained loads into partitions
    try:
        module = family.load_model(folder, seed=spec.training.seed, dtype=dtype)
    finally:
        del zero3
        unset_hf_deepspeed_config()  # the student and later loads are not partitioned
    module.eval().requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    release_freed_memory()
    return PlacedTeacher(engine.module, "zero3", engine)


def release_freed_memory() -> None:
    """Hand the heap memory freed after loading (checkpoint shards, fp32 upcasts) back to
    the OS; glibc keeps it otherwise, and a worker's resident memory would stay at the
    loading peak for the whole run."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to do
        pass


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's raw bytes; 0-dim tensors too (Gemma's `embed_scale` buffer)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
