"""The trainable half of a job: the student built and initialised as the spec says, plus its
objective (losses and projections). Shared by the worker loop and the benchmarks."""

from __future__ import annotations

from torch import nn

from distill_core.objective import DistillationModel, Objective, layer_pairs
from distill_core.student import StudentSize, build_student, freeze_word_embeddings
from jobs.spec import JobSpec


def distillation_model(spec: JobSpec, teacher: nn.Module) -> DistillationModel:
    """Student + objective for a resolved spec (student widths filled in by preflight)."""
    s = spec.student
    student = build_student(
        teacher,
        StudentSize(s.layers, s.hidden, s.heads, s.ffn),
        init=s.init,
        teacher_layers=s.teacher_layers,
        seed=spec.training.seed,
    )
    if s.freeze_word_embeddings:
        freeze_word_embeddings(student)
    objective = Objective(
        spec.objective.weights,
        student_hidden=s.hidden,
        teacher_hidden=teacher.config.hidden_size,
        pairs=layer_pairs(spec.objective.layer_map, s.layers, teacher.config.num_hidden_layers),
    )
    return DistillationModel(student, objective)
