"""Read slices of a Hugging Face checkpoint's tensors without reading whole shards.

A teacher partitioned over N workers (ZeRO-3) needs on each rank only 1/N of every
parameter: the contiguous range `[rank * part, (rank + 1) * part)` of the flattened tensor,
`part = ceil(numel / N)` (DeepSpeed's layout, `partition_range`). `CheckpointTensors` reads
a `model.safetensors` file or the shards listed by `model.safetensors.index.json`: from each
file's header it knows every tensor's dtype, shape and byte offsets, and since a tensor is
stored row-major, a rank's range is one contiguous byte range, read with `preadv` into a
buffer of exactly that size and cast to the requested dtype. So a rank never holds a whole
shard or a whole tensor, and nothing is memory-mapped: safetensors' `safe_open` maps the
file, and every page a reader touches then counts in its resident set (RssFile) until the
file is closed. The pages read stay in the kernel's page cache, outside every process.

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
        shard = _Shard(single)
        shard.close()
        return dict.fromkeys(shard.entries, SINGLE_FILE)
    return None


# safetensors' dtype names (the format's header) and their torch dtypes.
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _Shard:
    """One safetensors file: its header, and byte ranges read with `preadv` into buffers
    this process owns. No memory map: mapped pages would count in the reader's resident
    set (RssFile) for as long as the file stays open, up to the whole shard."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            n = int.from_bytes(os.pread(self.fd, 8, 0), "little")
            header = json.loads(os.pread(self.fd, n, 8))
        except (OSError, ValueError) as exc:
            os.close(self.fd)
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        self.base = 8 + n
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}

    def dtype(self, name: str) -> torch.dtype:
        kind = self.entries[name]["dtype"]
        if kind not in _DTYPES:
            raise NotSliceable(f"{self.path}: {name} is stored as {kind}")
        return _DTYPES[kind]

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, in its stored dtype."""
        dtype = self.dtype(name)
        size = torch.empty(0, dtype=dtype).element_size()
        offset = self.base + self.entries[name]["data_offsets"][0] + start * size
        buffer = bytearray((stop - start) * size)
        view, done = memoryview(buffer), 0
        while done < len(buffer):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got == 0:
                raise CheckpointError(f"{self.path}: truncated inside {name}")
            done += got
        return torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)

    def close(self) -> None:
        os.close(self.fd)


class CheckpointTensors:
    """The tensors of a safetensors checkpoint folder, read by flat element range."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = str(folder)
        files = shard_files(self.folder)
        if files is None:
            raise NotSliceable(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}")
        self.files = files
        self._open: dict[str, _Shard] = {}

    def names(self) -> set[str]:
        return set(self.files)

    def _shard(self, name: str) -> _Shard:
        file = self.files[name]
        if file not in self._open:
            path = os.path.join(self.folder, file)
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: missing (named by {INDEX_FILE})")
            self._open[file] = _Shard(path)
        return self._open[file]

    def path(self, name: str) -> str:
        return os.path.join(self.folder, self.files[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._shard(name).entries[name]["shape"])

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A whole tensor (for small ones: buffers), cast to `dtype`."""
        shape = self.shape(name)
        t = self._shard(name).read(name, 0, math.prod(shape)).reshape(shape)
        return t if dtype is None else t.to(dtype)

    def flat_range(self, name: str, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor `name` (row-major, so one
        contiguous byte range of its file), as a 1-D tensor of `dtype`: the only memory
        used is that range, at the stored dtype, and its cast."""
        if stop <= start:
            return torch.empty(0, dtype=dtype)
        return self._shard(name).read(name, start, stop).to(dtype)

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
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
