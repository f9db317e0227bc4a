"""The trainable half of a stage: the student built as the spec says (or carried over from
the previous stage, or a copy of the teacher for a fine-tuning stage), its optional task
head, and its objective (losses and projections). Shared by the worker loop and benchmarks.
"""

from __future__ import annotations

import copy

from torch import nn

from distill.core.data import collate, tokenize
from distill.core.export import load_encoder
from distill.core.generative import is_generative
from distill.core.lstm_student import build_lstm_student
from distill.core.objective import DistillationModel, Objective, ObjectiveSettings, layer_pairs
from distill.core.outputs import MlmHead, TaskHead
from distill.core.spec import JobSpec
from distill.core.student import StudentSize, build_student, freeze_word_embeddings

_CAUSAL_TYPES = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "opt", "phi"}


def is_causal(config) -> bool:
    return bool(getattr(config, "is_decoder", False)) or config.model_type in _CAUSAL_TYPES


def depth(config) -> int:
    """Number of layers behind `hidden_states` (index 0 is the embeddings)."""
    layers = getattr(config, "num_hidden_layers", None)
    return layers if layers is not None else config.num_layers


def _fresh_student(spec: JobSpec, teacher: nn.Module) -> nn.Module:
    s = spec.student
    if s.kind == "lstm":
        return build_lstm_student(
            teacher,
            embedding_dim=s.lstm.embedding_dim,
            hidden=s.lstm.hidden,
            layers=s.lstm.layers,
            pooling=s.lstm.pooling,
            init_embeddings=s.lstm.init_embeddings,
            seed=spec.training.seed,
        )
    return build_student(
        teacher,
        StudentSize(s.layers, s.hidden, s.heads, s.ffn),
        init=s.init,
        teacher_layers=s.teacher_layers,
        seed=spec.training.seed,
    )


def objective_settings(spec: JobSpec, student: nn.Module, teacher: nn.Module) -> ObjectiveSettings:
    o, tc = spec.objective, teacher.config
    return ObjectiveSettings(
        temperature=o.temperature,
        attention_layer=o.attention_layer or depth(tc),
        student_attention_layer=depth(student.config),
        attention_heads=tc.num_attention_heads,
        relation_heads=o.relation_heads or tc.num_attention_heads,
        task_type=spec.task.type if spec.task else None,
        causal=is_causal(tc),
    )


def distillation_model(
    spec: JobSpec,
    teacher: nn.Module,
    *,
    kind: str = "distill",
    previous_student: str | None = None,
    tokenizer=None,
) -> DistillationModel:
    """Student + head + objective for a resolved stage spec.

    kind=finetune: the trainable model is a full copy of the teacher (ERNIE-Tiny's and
    LightPAFF's fine-tuned teacher). previous_student: an exported student folder from the
    previous stage, carried over with its pooled projection and task head.
    """
    if is_generative(teacher.config):  # GPT-2 / BART-style: token-level objective
        from distill.cluster.generative_model import generative_distillation_model

        return generative_distillation_model(
            spec, teacher, tokenizer, kind=kind, previous_student=previous_student
        )
    projection, head = None, None
    if kind == "finetune":
        student = copy.deepcopy(teacher).requires_grad_(True).train()
    elif previous_student is not None:
        encoder = load_encoder(previous_student)
        student, projection = encoder.model.train(), encoder.projection
        head = TaskHead.load(previous_student)
    else:
        student = _fresh_student(spec, teacher)
    if spec.student.freeze_word_embeddings and kind != "finetune":
        freeze_word_embeddings(student)
    if spec.task is not None:
        t = spec.task
        if head is None or head.linear.out_features != t.num_labels or head.task_type != t.type:
            head = TaskHead(student.config.hidden_size, t.num_labels, t.type)
    elif head is not None:
        head = None  # a task-agnostic stage after a task stage: the head does not train
    objective = Objective(
        spec.objective.weights,
        student_hidden=student.config.hidden_size,
        teacher_hidden=teacher.config.hidden_size,
        pairs=layer_pairs(spec.objective.layer_map, depth(student.config), depth(teacher.config)),
        settings=objective_settings(spec, student, teacher),
    )
    if projection is not None and "pooled" in objective.projections:
        target = objective.projections["pooled"]
        if target.weight.shape == projection.weight.shape:
            target.load_state_dict(projection.state_dict())
    mlm_head = None
    if spec.objective.weights.get("mlm", 0) > 0:
        mlm_head = MlmHead(
            student.get_input_embeddings().weight.detach(),
            eps=getattr(student.config, "layer_norm_eps", 1e-12),
        )
    return DistillationModel(student, objective, head, mlm_head)


def batch_functions(model, tokenizer):
    """(tokenize, collate) for the model's batches: sentences (and labels) for encoders,
    text or source/target pairs for generative students."""
    if hasattr(model, "prepare_batch"):
        from distill.cluster.generative_model import generative_batch_functions

        return generative_batch_functions(tokenizer)
    return tokenize, collate(tokenizer)
