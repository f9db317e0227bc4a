"""The frozen teacher on a training worker, replicated or partitioned with ZeRO-3.

`zero3` (see `distill.core.teacher_plan`): the teacher is built from its config inside
`deepspeed.zero.Init` (transformers does so under a live stage-3 `HfDeepSpeedConfig`,
skipping weight initialisation) and each rank then reads only its own 1/N slice of every
parameter from the safetensors checkpoint, one byte range per tensor (`load_partitioned`,
`distill.core.checkpoint_slices`); a `.bin` checkpoint goes through transformers' own ZeRO-3
loader, which reads whole shards on rank 0 and gathers each module on every rank. It is then
wrapped in a DeepSpeed engine with stage 3 and no optimizer, whose hooks gather each layer's
parameters for its forward (prefetching the next ones, `teacher.zero3.*`) and release them
after. It stays frozen, outside the student's engine and
optimizer; its fingerprint is computed over every rank's partitions.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoConfig

from distill.core.checkpoint_slices import (
    CheckpointError,
    CheckpointTensors,
    NotSliceable,
    parameter_aliases,
    partition_range,
    tensor_names_for,
)
from distill.core.family_interface import ModelFamily
from distill.core.spec import JobSpec
from distill.core.teacher_plan import TORCH_DTYPES


@dataclass
class PlacedTeacher:
    """The teacher module the family calls, and how it is placed on this rank."""

    module: torch.nn.Module
    # replicate | zero3 | cache (not loaded: a teacher-output cache serves its outputs and
    # `module` is a weightless skeleton, `distill.core.lazy_teacher`) | service (not loaded
    # either: `service`, a Ray Serve deployment, answers; `module` is a skeleton)
    partition: str
    engine: object | None = None  # the stage-3 inference engine (zero3); keeps the hooks alive
    # How the weights were read: "whole" (replicate: from_pretrained, memory-mapped),
    # "slices" (zero3: each rank its own slices) or "transformers" (zero3 from a .bin).
    loader: str = "whole"
    service: object | None = None  # `cluster.teacher_service.ServedTeacher` (service)

    @property
    def partitioned(self) -> bool:
        return self.partition == "zero3"

    def local_parameters(self) -> int:
        """Teacher parameters resident on this rank (its partition under ZeRO-3; of a
        cached or served teacher's skeleton, what was read: a served LM's output head)."""
        if self.partition in ("cache", "service"):
            return sum(p.numel() for p in self.module.parameters() if not p.is_meta)
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
        if self.service is not None:  # the deployment's weights, hashed where they live
            return self.service.info()["fingerprint"]
        digest = state_digest(self.module, partitioned=self.partitioned)
        if not self.partitioned:
            return digest
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, digest)
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
            **(
                {"offload_param": {"device": "cpu", "pin_memory": True}}
                if z.offload and spec.scaling.gpus_per_worker > 0
                else {}
            ),
        },
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 10**9,
    }


def place_teacher(
    spec: JobSpec, family: ModelFamily, folder: str, device: torch.device
) -> PlacedTeacher:
    """Load the frozen teacher in `folder` as the resolved `teacher.placement` says."""
    dtype = TORCH_DTYPES[spec.teacher.dtype]
    if spec.teacher.placement == "replicate":
        module = family.load_model(folder, seed=spec.training.seed, dtype=dtype)
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        release_freed_memory()
        return PlacedTeacher(module, "replicate")
    config = teacher_deepspeed_config(spec)
    loader = "slices"
    try:
        module = load_partitioned(family, folder, config, dtype)
    except NotSliceable as why:
        loader = "transformers"  # a .bin checkpoint, unfamiliar names: transformers' loader
        if dist.get_rank() == 0:
            print(f"[distill] teacher: transformers' ZeRO-3 loader ({why})", flush=True)
        with _zero3_init(config):
            module = family.load_model(folder, seed=spec.training.seed, dtype=dtype)
    module.eval().requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    release_freed_memory()
    return PlacedTeacher(engine.module, "zero3", engine, loader=loader)


@contextlib.contextmanager
def _zero3_init(config: dict):
    """While alive, transformers builds models inside `deepspeed.zero.Init` (each module's
    parameters partitioned as soon as it is built, weight initialisation skipped)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    zero3 = HfDeepSpeedConfig(config)
    try:
        yield
    finally:
        del zero3
        unset_hf_deepspeed_config()  # the student and later loads are not partitioned


def load_partitioned(
    family: ModelFamily, folder: str, config: dict, dtype: torch.dtype
) -> torch.nn.Module:
    """The teacher in `folder` built inside ZeRO-3 partitions, each rank reading only its
    own slice of every parameter from the safetensors files
    (`distill.core.checkpoint_slices`), cast to `dtype` slice by slice. No rank holds a
    whole shard, and none a whole parameter except while its module is built (DeepSpeed
    allocates it, then partitions it). `NotSliceable` when the folder has no safetensors
    checkpoint or its names do not match the model's; `CheckpointError` (one line naming
    the file) for a missing or truncated shard or a tensor of the wrong shape."""
    with CheckpointTensors(folder) as tensors:
        with _zero3_init(config):
            model = family.auto_class.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
        params = parameter_aliases(model)
        names = tensor_names_for(
            {n: names for n, (_, names) in params.items()}, tensors.names(), model.base_model_prefix
        )
        rank, world = dist.get_rank(), dist.get_world_size()
        for name, (param, _) in params.items():
            source = names[name]
            shape = tensors.shape(source)
            if shape != tuple(param.ds_shape):
                raise CheckpointError(
                    f"{tensors.path(source)}: {source} has shape {list(shape)}; the teacher's "
                    f"config makes {list(param.ds_shape)}"
                )
            start, stop, size = partition_range(param.ds_numel, world, rank)
            if param.ds_tensor.numel() != size:  # another partition layout (hpZ, MiCS)
                raise NotSliceable(f"{name}: partition of {param.ds_tensor.numel()} elements")
            part = tensors.flat_range(source, start, stop, param.ds_tensor.dtype)
            with torch.no_grad():
                param.ds_tensor[: stop - start].copy_(part)
            del part
        _load_buffers(model, tensors)
    return model


def _load_buffers(model: torch.nn.Module, tensors: CheckpointTensors) -> None:
    """Buffers the checkpoint holds (small, never partitioned) are read whole; the others
    keep the values the model's constructor computed (e.g. rotary frequencies)."""
    available = tensors.names()
    prefix = model.base_model_prefix + "."
    for name, buffer in model.named_buffers():
        for candidate in (name, name.removeprefix(prefix), prefix + name):
            if candidate in available:
                with torch.no_grad():
                    buffer.copy_(tensors.read(candidate, buffer.dtype).reshape(buffer.shape))
                break


def release_freed_memory() -> None:
    """Hand the heap memory freed after loading (checkpoint shards, fp32 upcasts) back to
    the OS; glibc keeps it otherwise, and a worker's resident memory would stay at the
    loading peak for the whole run."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to do
        pass


def state_digest(module: torch.nn.Module, *, partitioned: bool = False) -> str:
    """sha256 over every parameter's bytes (this rank's ZeRO-3 partition when
    `partitioned`) and every buffer's, in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(_tensor_bytes(param.ds_tensor if partitioned else param))
    for name, buffer in sorted(module.named_buffers()):
        digest.update(name.encode())
        digest.update(_tensor_bytes(buffer))
    return digest.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's raw bytes; 0-dim tensors too (Gemma's `embed_scale` buffer)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
