"""A stage's objective: a weighted sum of named losses plus the learned projections they need.

`LOSSES` is the registry chosen by name in the job spec (`objective.weights`). Each entry
turns one `DistillView` (student and teacher outputs on a batch) into a scalar by calling a
pure loss from `losses.py`. The projections (student width -> teacher width) live in
`Objective`, so they train with the student and travel in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from distill_core import losses


def layer_pairs(
    layer_map: str | Sequence[int], student_layers: int, teacher_layers: int
) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` (0 = embeddings, i = layer i).

    `uniform` maps student layer i to teacher layer round(i * T / S) (TinyBERT's uniform
    strategy), `last` maps only the last layers, an explicit list gives the teacher layer
    for each student layer 1..S.
    """
    if layer_map == "uniform":
        return [
            (i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)
        ]
    if layer_map == "last":
        return [(student_layers, teacher_layers)]
    if isinstance(layer_map, str):
        raise ValueError(
            f"objective.layer_map: unknown {layer_map!r}; choose uniform, last or a list"
        )
    explicit = list(layer_map)
    if len(explicit) != student_layers:
        raise ValueError(
            f"objective.layer_map: expected {student_layers} teacher layers, got {len(explicit)}"
        )
    for t in explicit:
        if not 0 <= t <= teacher_layers:
            raise ValueError(f"objective.layer_map: teacher layer {t} not in 0..{teacher_layers}")
    return list(zip(range(1, student_layers + 1), explicit))


@dataclass
class DistillView:
    """Everything a loss term may read for one batch."""

    student_hidden: Sequence[torch.Tensor]
    teacher_hidden: Sequence[torch.Tensor]
    mask: torch.Tensor
    pairs: list[tuple[int, int]]
    projections: nn.ModuleDict

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.projections:
            return x
        layer = self.projections[name]
        # Pooled vectors arrive in float32; the projection may hold bf16/fp16 weights.
        return layer(x.to(layer.weight.dtype))

    @cached_property
    def student_embedding(self) -> torch.Tensor:
        pooled = losses.masked_mean_pool(self.student_hidden[-1], self.mask)
        return self.project("pooled", pooled)

    @cached_property
    def teacher_embedding(self) -> torch.Tensor:
        return losses.masked_mean_pool(self.teacher_hidden[-1], self.mask)


def _hidden_mse(view: DistillView) -> torch.Tensor:
    terms = [
        losses.hidden_mse(
            view.project(f"hidden_{s}", view.student_hidden[s]), view.teacher_hidden[t], view.mask
        )
        for s, t in view.pairs
    ]
    return torch.stack(terms).mean()


def _pooled_mse(view: DistillView) -> torch.Tensor:
    return losses.pooled_mse(view.student_embedding, view.teacher_embedding)


def _pooled_cosine(view: DistillView) -> torch.Tensor:
    return losses.pooled_cosine(view.student_embedding, view.teacher_embedding)


LOSSES: dict[str, Callable[[DistillView], torch.Tensor]] = {
    "hidden_mse": _hidden_mse,
    "pooled_mse": _pooled_mse,
    "pooled_cosine": _pooled_cosine,
}

# Which learned projections each loss needs when student and teacher widths differ.
_NEEDS_LAYER_PROJECTIONS = {"hidden_mse"}
_NEEDS_POOLED_PROJECTION = {"pooled_mse", "pooled_cosine"}


class Objective(nn.Module):
    """Weighted sum of registered losses, owning the student->teacher projections."""

    def __init__(
        self,
        weights: dict[str, float],
        *,
        student_hidden: int,
        teacher_hidden: int,
        pairs: list[tuple[int, int]],
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(
                f"objective.weights: unknown loss {unknown}; choose from {sorted(LOSSES)}"
            )
        self.weights = dict(weights)
        self.pairs = pairs
        self.projections = nn.ModuleDict()
        if student_hidden != teacher_hidden:
            if _NEEDS_LAYER_PROJECTIONS & set(weights):
                for s, _ in pairs:
                    self.projections[f"hidden_{s}"] = nn.Linear(student_hidden, teacher_hidden)
            # The pooled projection is always built when widths differ: it maps the student's
            # sentence embedding into the teacher's space for evaluation and export.
            self.projections["pooled"] = nn.Linear(student_hidden, teacher_hidden)

    def forward(
        self,
        student_hidden: Sequence[torch.Tensor],
        teacher_hidden: Sequence[torch.Tensor],
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = DistillView(student_hidden, teacher_hidden, mask, self.pairs, self.projections)
        parts = {name: LOSSES[name](view) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


class DistillationModel(nn.Module):
    """The trainable half of a distillation: student plus objective. The teacher stays out,
    so neither the optimizer nor DeepSpeed ever sees a teacher parameter."""

    def __init__(self, student: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        teacher_hidden: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.student(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        return self.objective(out.hidden_states, teacher_hidden, attention_mask)
