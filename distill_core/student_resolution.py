"""How a stage's student is resolved from the spec and the teacher, for every transformer
family: its width (`resolve_width`), its layer choice, a teacher-copy spec, a pretrained
student's own shape, and loading a state into it. The families (`encoder_family`,
`generative_family`) call these; the interface they implement is `family_interface`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from distill.core.model_types import model_type_name, model_type_of
from distill.core.spec import JobSpec, SpecError, StudentSpec
from distill.core.student import (
    StudentSize,
    architecture_size,
    init_teacher_layers,
    student_config,
    student_layer_choice,
)


def resolve_width(
    s: StudentSpec, teacher: StudentSize, *, narrow_only: bool, grouped: bool = False
) -> StudentSpec:
    """Student hidden/heads/kv_heads/ffn from the spec, defaulting to the teacher's shape: a
    narrower hidden keeps the teacher's head size, FFN ratio and grouped-query group size.
    Shared by every transformer family. narrow_only: a teacher-initialised student may not
    be wider than its teacher; grouped: the teacher's model type has key/value heads."""
    hidden = s.hidden or teacher.hidden
    head_dim = teacher.hidden // teacher.heads
    heads = s.heads or (teacher.heads if hidden == teacher.hidden else max(1, hidden // head_dim))
    if hidden % heads:
        raise SpecError(f"student.heads: {heads} does not divide student.hidden {hidden}")
    kv_heads = _resolve_kv_heads(s, teacher, heads, grouped)
    if narrow_only and s.init != "random":
        for field, value, most in (
            ("hidden", hidden, teacher.hidden),
            ("heads", heads, teacher.heads),
            ("kv_heads", kv_heads or heads, teacher.kv_heads or teacher.heads),
        ):
            if value > most:
                raise SpecError(
                    f"student.{field}: {value} > the teacher's {most}; a teacher-initialised "
                    "student can only be narrower (or use student.init: random)"
                )
    ffn = s.ffn or round(hidden * teacher.ffn / teacher.hidden)
    freeze = s.freeze_word_embeddings
    if freeze is None:
        freeze = s.init != "random" and hidden == teacher.hidden
    elif freeze and s.init == "random":
        raise SpecError(
            "student.freeze_word_embeddings: true needs a teacher-initialised student, not init=random"
        )
    return s.model_copy(
        update={
            "hidden": hidden,
            "heads": heads,
            "kv_heads": kv_heads,
            "ffn": ffn,
            "freeze_word_embeddings": freeze,
        }
    )


def _resolve_kv_heads(s: StudentSpec, teacher: StudentSize, heads: int, grouped: bool):
    """Key/value heads of a grouped-query student (None: one per head, no GQA field)."""
    if not grouped:
        if s.kv_heads is not None:
            raise SpecError(
                "student.kv_heads: the teacher has no grouped-query attention (no key/value "
                "head count in its config)"
            )
        return None
    if s.kv_heads is not None:
        kv = s.kv_heads
    elif heads == teacher.heads:
        kv = teacher.kv_heads or heads
    else:
        group = teacher.heads // (teacher.kv_heads or teacher.heads)
        if heads % group:
            raise SpecError(
                f"student.heads: {heads} is not a multiple of the teacher's {group} query heads "
                "per key/value head; set student.kv_heads to a divisor of student.heads"
            )
        kv = heads // group
    if heads % kv:
        raise SpecError(f"student.kv_heads: {kv} does not divide student.heads {heads}")
    return kv


def check_layer_choice(s: StudentSpec, teacher_depth: int, student_depth: int) -> None:
    """The student's init can choose its layers from a teacher this deep (one-line error)."""
    try:
        init_teacher_layers(s.init, teacher_depth, student_depth, s.teacher_layers)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def as_teacher_copy(spec: JobSpec, teacher: StudentSize, init: str) -> JobSpec:
    """A finetune (or pretrain) stage trains the teacher's own architecture: the student
    spec becomes the teacher's shape."""
    student = spec.student.model_copy(
        update={
            "kind": "transformer",
            "layers": teacher.layers,
            "decoder_layers": teacher.decoder_layers,
            "hidden": teacher.hidden,
            "heads": teacher.heads,
            "kv_heads": teacher.kv_heads,
            "ffn": teacher.ffn,
            "init": init,
            "name": None,
            "teacher_layers": None,
            "freeze_word_embeddings": False,
        }
    )
    return spec.model_copy(update={"student": student})


def used_losses(spec: JobSpec) -> set[str]:
    """The objective's losses with a positive weight (at least one)."""
    used = {name for name, w in spec.objective.weights.items() if w > 0}
    if not used:
        raise SpecError("objective.weights: needs at least one loss with a positive weight")
    return used


def student_size(spec: JobSpec) -> StudentSize:
    s = spec.student
    return StudentSize(s.layers, s.hidden, s.heads, s.ffn, s.decoder_layers, s.kv_heads)


def student_model_config(spec: JobSpec, teacher_config: PretrainedConfig) -> PretrainedConfig:
    """The config of a resolved stage's transformer student: a pretrained student's own, or
    the teacher's resized (per-layer lists follow the teacher layers its init chooses)."""
    s = spec.student
    if s.init == PRETRAINED:
        return AutoConfig.from_pretrained(s.name)
    size = student_size(spec)
    chosen = student_layer_choice(teacher_config, size, s.init, s.teacher_layers)
    return student_config(teacher_config, size, chosen[0])


# The student's keys in a consolidated state dict of a family's trainable model: every
# family's trainable model holds its student as `.student`.
STUDENT_PREFIX = "student."


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a consolidated state dict into `model`, tolerating only missing persistent
    buffers (ZeRO checkpoints hold parameters)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {n for n, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match student from config.yaml: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.eval()


PRETRAINED = "pretrained"
# Where `objective.sequence_kd` applies (every family's preflight refuses it elsewhere).
SEQUENCE_KD_NEEDS = (
    "needs a distill stage with a causal teacher, or with a seq2seq teacher and a seq2seq task"
)
_OWN_SHAPE = ("layers", "hidden", "heads", "kv_heads", "ffn", "decoder_layers", "teacher_layers")


def resolve_pretrained_student(spec: JobSpec, family: str) -> JobSpec:
    """A `student.init: pretrained` student: its shape read from its own config (`student.name`),
    which must be of the teacher's family. Shape fields set in the spec are refused (the
    model keeps its own); its word embeddings train unless frozen explicitly."""
    s = spec.student
    if s.init != PRETRAINED:
        if s.name is not None:
            raise SpecError("student.name: only with student.init: pretrained")
        return spec
    if s.name is None:
        raise SpecError(
            "student.name: student.init: pretrained needs the student's model folder (with its "
            "tokenizer)"
        )
    if s.kind != "transformer":
        raise SpecError("student.init: pretrained takes a transformer student (student.kind)")
    given = sorted(f for f in _OWN_SHAPE if f in s.model_fields_set and getattr(s, f) is not None)
    if given:
        raise SpecError(
            f"student.{given[0]}: a pretrained student keeps its own shape; drop student.{given[0]}"
        )
    try:
        config = AutoConfig.from_pretrained(s.name)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"student.name: cannot load {s.name!r} ({reason})") from None
    entry = model_type_of(config)
    if entry.family != family:
        raise SpecError(
            f"student.name: {s.name} is a {entry.family} model ({model_type_name(config)}); a "
            f"{family} teacher needs a {family} student"
        )
    try:
        size = architecture_size(config)
    except ValueError as exc:
        raise SpecError(f"student.name: {exc}") from None
    student = s.model_copy(
        update={
            "layers": size.layers,
            "hidden": size.hidden,
            "heads": size.heads,
            "kv_heads": size.kv_heads,
            "ffn": size.ffn,
            "decoder_layers": size.decoder_layers,
            "teacher_layers": None,
            "freeze_word_embeddings": bool(s.freeze_word_embeddings),
        }
    )
    return spec.model_copy(update={"student": student})


def load_pretrained_student(spec: JobSpec, auto_class) -> nn.Module:
    """The pretrained student of `student.name`, in training mode."""
    return auto_class.from_pretrained(spec.student.name).train()
