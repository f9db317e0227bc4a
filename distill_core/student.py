"""Students built from a teacher's config by depth and width, with a named initialisation.

`STUDENT_INITS` maps an init name to the teacher layers each student layer copies
(`random` copies nothing). Copies slice teacher tensors to the student's shape, so a
narrower student takes the leading rows/columns of each weight (width slicing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig


@dataclass(frozen=True)
class StudentSize:
    layers: int
    hidden: int
    heads: int
    ffn: int


def every_other_layer(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers 0, 2, 4, ... (0-based), as in DistilBERT; needs 2*S-1 <= T."""
    if 2 * n_student - 1 > n_teacher:
        raise ValueError(
            f"student.init=every_other_layer: {n_student} student layers need a teacher with "
            f">= {2 * n_student - 1} layers, it has {n_teacher}"
        )
    return [2 * i for i in range(n_student)]


def uniform_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers spread evenly from the first to the last."""
    if n_student > n_teacher:
        raise ValueError(
            f"student.init=uniform_map: {n_student} student layers need a teacher with >= "
            f"{n_student} layers, it has {n_teacher}"
        )
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def first_k(n_teacher: int, n_student: int) -> list[int]:
    """The bottom S teacher layers."""
    if n_student > n_teacher:
        raise ValueError(
            f"student.init=first_k: {n_student} student layers need a teacher with >= {n_student} "
            f"layers, it has {n_teacher}"
        )
    return list(range(n_student))


STUDENT_INITS: dict[str, Callable[[int, int], list[int]] | None] = {
    "random": None,
    "every_other_layer": every_other_layer,
    "uniform_map": uniform_map,
    "first_k": first_k,
}


def student_config(teacher_config: PretrainedConfig, size: StudentSize) -> PretrainedConfig:
    """The teacher's config with depth and width replaced."""
    if size.hidden % size.heads:
        raise ValueError(
            f"student.heads: {size.heads} does not divide student.hidden {size.hidden}"
        )
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = size.layers
    config.hidden_size = size.hidden
    config.num_attention_heads = size.heads
    config.intermediate_size = size.ffn
    return config


def init_teacher_layers(
    init: str, n_teacher: int, n_student: int, explicit: Sequence[int] | None = None
) -> list[int] | None:
    """Teacher layer (0-based) copied into each student layer, or None for random init."""
    if explicit is not None:
        bad = [i for i in explicit if not 0 <= i < n_teacher]
        if len(explicit) != n_student or bad:
            raise ValueError(
                f"student.teacher_layers: expected {n_student} indices in 0..{n_teacher - 1}, "
                f"got {list(explicit)}"
            )
        return list(explicit)
    if init not in STUDENT_INITS:
        raise ValueError(f"student.init: unknown '{init}'; choose from {sorted(STUDENT_INITS)}")
    chooser = STUDENT_INITS[init]
    return None if chooser is None else chooser(n_teacher, n_student)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: the ModuleList as long as num_hidden_layers."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find a list of {n} layers in {type(model).__name__}")


def _copy_sliced(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the leading block of `src` that fits `dst` (identity when shapes match)."""
    index = tuple(slice(0, d) for d in dst.shape)
    dst.copy_(src[index])


@torch.no_grad()
def copy_teacher_weights(student: nn.Module, teacher: nn.Module, teacher_layers: list[int]) -> None:
    """Initialise `student` from `teacher`: non-layer weights by name, layer i from
    teacher layer teacher_layers[i], width-sliced where the student is narrower."""
    s_layers, t_layers = layer_list(student), layer_list(teacher)
    for s_block, t_index in zip(s_layers, teacher_layers):
        t_params = dict(t_layers[t_index].named_parameters())
        for name, param in s_block.named_parameters():
            _copy_sliced(param, t_params[name])
    layer_ids = {id(p) for p in s_layers.parameters()}
    t_all = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if id(param) not in layer_ids and name in t_all:
            _copy_sliced(param, t_all[name])


def build_student(
    teacher: nn.Module,
    size: StudentSize,
    init: str = "every_other_layer",
    teacher_layers: Sequence[int] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Build a student of `size` from the teacher's config and initialise it by `init`."""
    config = student_config(teacher.config, size)
    torch.manual_seed(seed)
    student = AutoModel.from_config(config, attn_implementation=teacher.config._attn_implementation)
    chosen = init_teacher_layers(
        init, teacher.config.num_hidden_layers, size.layers, teacher_layers
    )
    if chosen is not None:
        copy_teacher_weights(student, teacher, chosen)
    return student


def freeze_word_embeddings(model: nn.Module) -> None:
    """Stop training the token-embedding table (positions and LayerNorm still train)."""
    model.get_input_embeddings().requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
