"""The trainable half of a stage for a generative teacher (GPT-2-style decoder or
BART-style encoder-decoder): the student LM (built from the teacher's config, carried over
from the previous stage, a copy of the teacher for `finetune`, or a fresh random model of the
teacher's architecture for `pretrain`) and its token objective. Used by the worker loop
through `distill.cluster.job_model.distillation_model` and by `bench/generative.py`."""

from __future__ import annotations

import copy

from torch import nn

from distill.core.generative import (
    BatchIds,
    GenerativeDistillationModel,
    GenerativeSize,
    TokenObjective,
    TokenSettings,
    auto_class,
    build_generative_student,
    generative_collate,
    load_exported,
    model_family,
    num_chunks,
    tokenize_generative,
)
from distill.core.spec import JobSpec
from distill.core.student import freeze_word_embeddings


def student_size(spec: JobSpec) -> GenerativeSize:
    s = spec.student
    return GenerativeSize(s.layers, s.hidden, s.heads, s.ffn, s.decoder_layers)


def generative_distillation_model(
    spec: JobSpec,
    teacher: nn.Module,
    tokenizer,
    *,
    kind: str = "distill",
    previous_student: str | None = None,
) -> GenerativeDistillationModel:
    if kind == "finetune":
        student = copy.deepcopy(teacher).requires_grad_(True).train()
    elif kind == "pretrain":
        student = auto_class(model_family(teacher.config)).from_config(teacher.config)
        student.train()
    elif previous_student is not None:
        student = load_exported(previous_student).train()
    else:
        student = build_generative_student(
            teacher,
            student_size(spec),
            init=spec.student.init,
            teacher_layers=spec.student.teacher_layers,
            seed=spec.training.seed,
        ).train()
    if spec.student.freeze_word_embeddings and kind == "distill":
        freeze_word_embeddings(student)
    o = spec.objective
    settings = TokenSettings(
        temperature=o.temperature,
        jsd_beta=o.jsd_beta,
        num_chunks=num_chunks(spec.training.batch_size, spec.data.max_length, o.logit_chunk),
    )
    ids = BatchIds.from_model(teacher.config, tokenizer, noise_ratio=o.noise_ratio)
    return GenerativeDistillationModel(student, TokenObjective(o.weights, settings), ids)


def generative_batch_functions(tokenizer):
    """(tokenize, collate) for generative stages: text, or text + target pairs."""
    return tokenize_generative, generative_collate(tokenizer)
