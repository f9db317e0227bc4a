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

from distill.core import losses
from distill.core.attention_terms import ATTENTION_TERMS, AttentionSettings, ReadsQkv
from distill.core.mixup import mixup
from distill.core.outputs import ModelOutputs, forward_outputs


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


@dataclass(frozen=True)
class ObjectiveSettings:
    """Knobs of the logit losses and, when the objective has MiniLM / MiniLMv2 terms, of
    the attention it distils (see `distill.core.spec.ObjectiveSpec`)."""

    temperature: float = 1.0
    task_type: str | None = None  # "classification" | "regression" when a task head exists
    attention: AttentionSettings | None = None


@dataclass
class DistillView:
    """Everything a loss term may read for one batch. `labels` are class ids (or scores);
    `soft_labels` replace them on MixKD's mixed batches (interpolated targets)."""

    student: ModelOutputs
    teacher: ModelOutputs | None
    mask: torch.Tensor
    pairs: list[tuple[int, int]]
    projections: nn.ModuleDict
    settings: ObjectiveSettings
    labels: torch.Tensor | None = None
    soft_labels: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None  # [masked tokens] vocabulary ids

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.projections:
            return x
        layer = self.projections[name]
        # Pooled vectors arrive in float32; the projection may hold bf16/fp16 weights.
        return layer(x.to(layer.weight.dtype))

    @cached_property
    def student_embedding(self) -> torch.Tensor:
        return self.project("pooled", self.student.pooled)

    @cached_property
    def teacher_embedding(self) -> torch.Tensor:
        return self.teacher.pooled

    def attention(self) -> tuple[tuple, tuple]:
        """(student q,k,v; teacher q,k,v) of the distilled self-attention layers."""
        s = self.settings.attention
        return self.student.qkv[s.student_layer], self.teacher.qkv[s.teacher_layer]


def _over_layer_pairs(
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[DistillView], torch.Tensor]:
    """The term that averages `loss(student hidden, teacher hidden, mask)` over the mapped
    (student, teacher) layer pairs, each student layer read through its `hidden_<i>`
    projection (TinyBERT's per-layer hidden-state transfer)."""

    def term(view: DistillView) -> torch.Tensor:
        terms = [
            loss(
                view.project(f"hidden_{s}", view.student.hidden[s]),
                view.teacher.hidden[t],
                view.mask,
            )
            for s, t in view.pairs
        ]
        return torch.stack(terms).mean()

    return term


def _embedding_mse(view: DistillView) -> torch.Tensor:
    student = view.project("hidden_0", view.student.hidden[0])
    return losses.hidden_mse(student, view.teacher.hidden[0], view.mask)


def _pooled_mse(view: DistillView) -> torch.Tensor:
    return losses.pooled_mse(view.student_embedding, view.teacher_embedding)


def _pooled_cosine(view: DistillView) -> torch.Tensor:
    return losses.pooled_cosine(view.student_embedding, view.teacher_embedding)


def _pooled_similarity(view: DistillView) -> torch.Tensor:
    return losses.similarity_mse(view.student_embedding, view.teacher_embedding)


def _logit_kl(view: DistillView) -> torch.Tensor:
    return losses.logit_kl(
        view.student.logits, view.teacher.logits, temperature=view.settings.temperature
    )


def _logit_mse(view: DistillView) -> torch.Tensor:
    return losses.pooled_mse(view.student.logits, view.teacher.logits)


def _hard_label(view: DistillView) -> torch.Tensor:
    logits = view.student.logits
    regression = view.settings.task_type == "regression"
    if view.soft_labels is not None:  # MixKD: interpolated targets of a mixed pair
        if regression:
            return losses.hard_label_mse(logits.squeeze(-1), view.soft_labels)
        return losses.soft_label_ce(logits, view.soft_labels)
    if regression:
        return losses.hard_label_mse(logits.squeeze(-1), view.labels)
    return losses.hard_label_ce(logits, view.labels)


def _mlm(view: DistillView) -> torch.Tensor:
    return losses.hard_label_ce(view.student.mlm_logits, view.mlm_labels)


def _attention(name: str) -> Callable[[DistillView], torch.Tensor]:
    term = ATTENTION_TERMS[name]

    def loss(view: DistillView) -> torch.Tensor:
        student, teacher = view.attention()
        return term(student, teacher, view.mask, view.settings.attention)

    return loss


LOSSES: dict[str, Callable[[DistillView], torch.Tensor]] = {
    "hidden_mse": _over_layer_pairs(losses.hidden_mse),
    "embedding_mse": _embedding_mse,
    "hidden_cosine": _over_layer_pairs(losses.hidden_cosine),
    "pooled_mse": _pooled_mse,
    "pooled_cosine": _pooled_cosine,
    "pooled_similarity": _pooled_similarity,
    "logit_kl": _logit_kl,
    "logit_mse": _logit_mse,
    "hard_label": _hard_label,
    "mlm": _mlm,
    "attention_kl": _attention("attention_kl"),
    "value_relation_kl": _attention("value_relation_kl"),
    "minilmv2_relations": _attention("minilmv2_relations"),
}

# What each loss reads, so the job runs only the forwards and hooks it needs.
LAYER_PROJECTION_LOSSES = {"hidden_mse", "hidden_cosine"}
POOLED_LOSSES = {"pooled_mse", "pooled_cosine", "pooled_similarity"}
# Pooled losses that compare vectors coordinate by coordinate: across widths they read the
# student's embedding through the learned pooled projection (`pooled_similarity` compares
# in-batch similarities, so it needs none).
PROJECTED_POOLED_LOSSES = {"pooled_mse", "pooled_cosine"}
# (`attention_terms.ATTENTION_LOSSES` read the Q/K/V of `settings.attention`'s layers.)
TASK_LOSSES = {"logit_kl", "logit_mse", "hard_label"}  # need a task head
TEACHERLESS_LOSSES = {"hard_label", "mlm"}  # no teacher forward needed


def needs_teacher(weights: dict[str, float]) -> bool:
    return any(w > 0 and name not in TEACHERLESS_LOSSES for name, w in weights.items())


class Objective(ReadsQkv, nn.Module):
    """Weighted sum of registered losses, owning the student->teacher projections."""

    def __init__(
        self,
        weights: dict[str, float],
        *,
        student_hidden: int,
        teacher_hidden: int,
        pairs: list[tuple[int, int]],
        settings: ObjectiveSettings = ObjectiveSettings(),
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(
                f"objective.weights: unknown loss {unknown}; choose from {sorted(LOSSES)}"
            )
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.pairs = pairs
        self.settings = settings
        self.projections = nn.ModuleDict()
        if student_hidden != teacher_hidden:
            layers = [s for s, _ in pairs] if LAYER_PROJECTION_LOSSES & set(self.weights) else []
            if "embedding_mse" in self.weights:
                layers = sorted({0, *layers})
            for s in layers:
                self.projections[f"hidden_{s}"] = nn.Linear(student_hidden, teacher_hidden)
            # The pooled projection maps the student's sentence embedding into the teacher's
            # space for the losses, evaluation and export. It is left out only when the
            # sentence-level terms are all width-free (`pooled_similarity`): the student's
            # own embedding is then trained, evaluated and exported.
            used = set(self.weights)
            if "pooled_similarity" not in used or used & PROJECTED_POOLED_LOSSES:
                self.projections["pooled"] = nn.Linear(student_hidden, teacher_hidden)

    @property
    def needs_teacher(self) -> bool:
        return needs_teacher(self.weights)

    def forward(
        self,
        student: ModelOutputs,
        teacher: ModelOutputs | None,
        mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = DistillView(
            student,
            teacher,
            mask,
            self.pairs,
            self.projections,
            self.settings,
            labels,
            soft_labels,
            mlm_labels,
        )
        parts = {name: LOSSES[name](view) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


@dataclass
class MixedBatch:
    """MixKD's second view of a batch: pairs (i, perm[i]) mixed with weight `lam`.
    `batch` carries the union attention mask; `teacher` are the teacher's outputs on its own
    mixed embeddings; `soft_labels` the interpolated targets (None without labels)."""

    batch: dict[str, torch.Tensor]
    teacher: ModelOutputs | None
    perm: torch.Tensor
    lam: float
    weight: float
    soft_labels: torch.Tensor | None = None


class DistillationModel(nn.Module):
    """The trainable half of a distillation: student, optional task head and objective. The
    teacher stays out, so neither the optimizer nor DeepSpeed ever sees a teacher parameter."""

    def __init__(
        self,
        student: nn.Module,
        objective: Objective,
        head: nn.Module | None = None,
        mlm_head: nn.Module | None = None,
        masking=None,
    ) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.head = head
        self.mlm_head = mlm_head
        self.masking = masking  # `outputs.MlmMasking` of the `mlm` loss's inputs, or None

    def _loss(self, batch, teacher, inputs_embeds=None, soft_labels=None):
        student = forward_outputs(
            self.student,
            batch,
            head=self.head,
            qkv_layers=self.objective.student_qkv_layers,
            inputs_embeds=inputs_embeds,
        )
        mlm_labels = None
        if self.mlm_head is not None and "mlm_labels" in batch:
            chosen = batch["mlm_labels"] != -100
            student.mlm_logits = self.mlm_head(student.hidden[-1][chosen])
            mlm_labels = batch["mlm_labels"][chosen]
        return self.objective(
            student, teacher, batch["attention_mask"], batch.get("labels"), soft_labels, mlm_labels
        )

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        teacher: ModelOutputs | None,
        mixed: MixedBatch | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on `batch`, plus `mixed.weight` x the objective on the mixed batch,
        where the student runs on its own token embeddings mixed the same way (MixKD)."""
        loss, parts = self._loss(batch, teacher)
        if mixed is not None:
            own = self.student.get_input_embeddings()(mixed.batch["input_ids"])
            embeds, _ = mixup(own, mixed.batch["attention_mask"], mixed.perm, mixed.lam)
            mix_loss, mix_parts = self._loss(mixed.batch, mixed.teacher, embeds, mixed.soft_labels)
            loss = loss + mixed.weight * mix_loss
            parts.update({f"mix_{k}": v for k, v in mix_parts.items()})
        return loss, parts
