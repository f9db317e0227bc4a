"""Read slices of a Hugging Face checkpoint's tensors without reading whole shards.

A teacher partitioned over N workers (ZeRO-3) needs on each rank only 1/N of every
parameter: the contiguous range `[rank * part, (rank + 1) * part)` of the flattened tensor,
`part = ceil(numel / N)` (DeepSpeed's layout, `partition_range`). `CheckpointTensors` opens a
`model.safetensors` file or the shards listed by `model.safetensors.index.json` with
safetensors' memory-mapped `safe_open` and reads such a range through `get_slice` on the
tensor's first dimension: only the rows holding the range are copied (at most the range
plus two rows), cast to the requested dtype on the way, so a rank never holds a whole shard
or a whole tensor in anonymous memory. Pages of the mapped file that were read stay in the
page cache (file-backed, reclaimable), not in the process's heap.

`tensor_names_for` maps a model's parameter names onto the checkpoint's (base-model
prefixes, tied weights). A missing or truncated shard is refused before Ray starts, by
`distill.core.model_files.teacher_folder_problem`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import torch
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder whose files cannot be read as its index says (bad input)."""


class NotSliceable(Exception):
    """The folder has no safetensors checkpoint, or names that cannot be matched to the
    model's: the caller loads it the slower way."""


def partition_range(numel: int, world: int, rank: int) -> tuple[int, int, int]:
    """(start, stop, partition size) of `rank`'s elements of a flattened tensor of `numel`
    elements partitioned over `world` ranks as DeepSpeed ZeRO-3 does: equal partitions of
    ceil(numel / world) elements, the last ones padded (stop may be < start + size)."""
    size = math.ceil(numel / world)
    start = min(size * rank, numel)
    return start, min(start + size, numel), size


def shard_files(folder: str | os.PathLike) -> dict[str, str] | None:
    """{tensor name: shard file name} of a safetensors checkpoint (the index's weight map,
    or every tensor of the single file); None when the folder has neither."""
    folder = str(folder)
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                return dict(json.load(f)["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.isfile(single):
        with _open(single) as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    return None


class CheckpointTensors:
    """The tensors of a safetensors checkpoint folder, read by flat element range."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = str(folder)
        files = shard_files(self.folder)
        if files is None:
            raise NotSliceable(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}")
        self.files = files
        self._open: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.files)

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._open:
            path = os.path.join(self.folder, file)
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: missing (named by {INDEX_FILE})")
            self._open[file] = _open(path).__enter__()
        return self._open[file]

    def path(self, name: str) -> str:
        return os.path.join(self.folder, self.files[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A whole tensor (for small ones: buffers), cast to `dtype`."""
        t = self._handle(name).get_tensor(name)
        return t if dtype is None else t.to(dtype)

    def flat_range(self, name: str, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor `name`, as a 1-D tensor of
        `dtype`; reads only the rows of the first dimension that hold them."""
        handle = self._handle(name)
        piece = handle.get_slice(name)
        shape = piece.get_shape()
        if stop <= start:
            return torch.empty(0, dtype=dtype)
        if len(shape) == 0:
            return handle.get_tensor(name).reshape(1).to(dtype)
        row = math.prod(shape[1:])
        first, last = start // row, -(-stop // row)
        rows = piece[first:last]
        flat = rows.reshape(-1)[start - first * row : stop - first * row]
        return flat.to(dtype)

    def close(self) -> None:
        for handle in self._open.values():
            handle.__exit__(None, None, None)
        self._open.clear()

    def __enter__(self) -> CheckpointTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_names_for(
    aliases: dict[str, list[str]], available: Iterable[str], base_prefix: str
) -> dict[str, str]:
    """{model name: checkpoint name} for each tensor of a model, given every name each
    tensor answers to (`aliases`: first name -> all names, tied weights share one) and the
    checkpoint's names. A checkpoint of the base model read into a model with a head (or
    the reverse) differs by `base_prefix.` in front; `NotSliceable` names the first tensor
    found under none of these names."""
    available = set(available)
    out = {}
    for first, names in aliases.items():
        for name in names:
            candidates = [name]
            if base_prefix:
                prefix = base_prefix + "."
                candidates.append(name[len(prefix) :] if name.startswith(prefix) else prefix + name)
            hit = next((c for c in candidates if c in available), None)
            if hit is not None:
                out[first] = hit
                break
        else:
            raise NotSliceable(f"no checkpoint tensor for {first}")
    return out


def shape_problem(folder: str | os.PathLike, model: torch.nn.Module) -> str | None:
    """The first checkpoint tensor whose shape differs from `model`'s (a meta-device model
    built from the folder's config), naming the file; None when all agree or the names
    cannot be matched (transformers then judges). Reads only the headers."""
    try:
        with CheckpointTensors(folder) as tensors:
            params = parameter_aliases(model)
            names = tensor_names_for(
                {n: names for n, (_, names) in params.items()},
                tensors.names(),
                getattr(model, "base_model_prefix", ""),
            )
            for name, (param, _) in params.items():
                shape = tensors.shape(names[name])
                if shape != tuple(param.shape):
                    return (
                        f"{tensors.path(names[name])}: {names[name]} has shape {list(shape)}; "
                        f"the config makes {list(param.shape)}"
                    )
    except NotSliceable:
        return None
    return None


def parameter_aliases(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Parameter, list[str]]]:
    """{first name: (parameter, every name it answers to)}: tied weights are one entry."""
    seen: dict[int, str] = {}
    out: dict[str, tuple[torch.nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen[id(param)] = name
            out[name] = (param, [])
        out[seen[id(param)]][1].append(name)
    return out


def _open(path: str):
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
