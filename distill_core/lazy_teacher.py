"""A teacher known by its architecture alone, whose weights are read from its safetensors
files only while a student copies them.

With a complete teacher-output cache no training step runs the teacher, so a training
worker need not hold it: `skeleton_teacher` builds the teacher's module with every
parameter on the `meta` device (no memory) and returns a `gather(params)` context that
swaps in the real tensors of just those parameters, read from the checkpoint (one
safetensors slice each), and swaps them out again. The student builders already read a
teacher through `gather` (a ZeRO-3 teacher gathers its partitions the same way), so a
student initialised from teacher layers reads only the layers it copies.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig

from distill.core.student import Gather


def weight_index(folder: str | Path) -> dict[str, Path] | None:
    """{checkpoint key: safetensors file} of a model folder; None when its weights are not
    safetensors (a `.bin` checkpoint or no weights)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / file for key, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


class Skeleton(NamedTuple):
    """module: the teacher with meta parameters; gather(params): a context that reads them
    from the checkpoint and swaps them out again; keep(params): reads them for good."""

    module: nn.Module
    gather: Gather
    keep: Callable[[Sequence[nn.Parameter]], None]


def skeleton_teacher(folder: str | Path, auto_class) -> Skeleton | None:
    """The teacher's module with meta parameters and the functions that read them from
    `folder`, or None when the folder has no safetensors weights to read lazily."""
    files = weight_index(folder)
    if files is None:
        return None
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):  # buffers (position ids, biases) stay real
        model = auto_class.from_config(config)
    model.tie_weights()  # as loading does: a tied LM head is the embeddings' parameter
    model.eval().requires_grad_(False)
    names = {id(p): name for name, p in model.named_parameters()}
    prefix = getattr(model, "base_model_prefix", "")
    init_std = getattr(config, "initializer_range", 0.02)

    def read(name: str, like: torch.Tensor) -> torch.Tensor:
        candidates = [name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
        for key in candidates:
            if key in files:
                with safe_open(str(files[key]), framework="pt") as f:
                    return f.get_tensor(key).to(torch.float32)
        # Absent from the checkpoint: transformers would initialise it randomly on load too.
        return torch.empty(like.shape).normal_(0.0, init_std)

    @contextlib.contextmanager
    def gather(params: Sequence[nn.Parameter]) -> Iterator[None]:
        swapped = []
        try:
            for p in params:
                real = nn.Parameter(read(names[id(p)], p), requires_grad=False)
                torch.utils.swap_tensors(p, real)
                swapped.append((p, real))
            yield
        finally:
            for p, real in swapped:  # back to meta: the worker keeps no teacher weight
                torch.utils.swap_tensors(p, real)

    def keep(params: Sequence[nn.Parameter]) -> None:
        """Read `params` for good (a served LM teacher's output head, which each worker
        applies to the hidden states the service returns)."""
        for p in params:
            if p.is_meta:
                torch.utils.swap_tensors(p, nn.Parameter(read(names[id(p)], p), False))

    return Skeleton(model, gather, keep)
