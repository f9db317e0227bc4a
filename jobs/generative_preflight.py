"""Preflight for stages whose teacher is generative (GPT-2-style causal LM or BART-style
seq2seq): losses, task, student dims and init, all checked before Ray starts; each bad
input is a one-line `SpecError` naming the field."""

from __future__ import annotations

from distill.core.generative import TOKEN_LOSSES, architecture_size, model_family
from distill.core.spec import JobSpec, SpecError
from distill.core.student import init_teacher_layers


def resolve_generative_stage(spec: JobSpec, kind: str, tc, teacher_has_weights: bool) -> JobSpec:
    """Validate a generative stage; return it with the student's dims filled in."""
    family = model_family(tc)
    o, s = spec.objective, spec.student
    used = {name for name, w in o.weights.items() if w > 0}
    if not used:
        raise SpecError("objective.weights: needs at least one loss with a positive weight")
    unknown = sorted(used - set(TOKEN_LOSSES))
    if unknown:
        raise SpecError(
            f"objective.weights: {unknown} do not apply to a {family} teacher "
            f"({tc.model_type}); choose from {sorted(TOKEN_LOSSES)}"
        )
    if o.mixup is not None:
        raise SpecError("objective.mixup: MixKD needs an encoder teacher")
    if spec.task is not None and (family == "causal" or spec.task.type != "seq2seq"):
        allowed = "no task (it trains on plain text)" if family == "causal" else "type: seq2seq"
        raise SpecError(f"task.type: a {family} teacher ({tc.model_type}) takes {allowed}")
    if o.sequence_kd is not None and (
        family != "seq2seq" or spec.task is None or kind != "distill"
    ):
        raise SpecError(
            "objective.sequence_kd: needs a seq2seq teacher, a seq2seq task and a distill stage"
        )
    if kind in ("pretrain", "finetune") and used != {"lm"}:
        raise SpecError(
            f"objective.weights: a {kind} stage trains on the LM loss only: {{lm: 1.0}}"
        )
    if kind != "pretrain" and not teacher_has_weights:
        raise SpecError(
            f"teacher.name: {spec.teacher.name} is an architecture without weights; train it "
            "first with a `kind: pretrain` stage and name it as teacher.name: stage:NAME"
        )
    if s.kind != "transformer":
        raise SpecError(f"student.kind: a {family} teacher takes a transformer student")
    if s.decoder_layers is not None and family != "seq2seq":
        raise SpecError("student.decoder_layers: only for seq2seq (encoder-decoder) teachers")
    size = architecture_size(tc)
    if kind in ("pretrain", "finetune"):  # the trained model is the teacher's architecture
        student = s.model_copy(
            update={
                "layers": size.layers,
                "decoder_layers": size.decoder_layers,
                "hidden": size.hidden,
                "heads": size.heads,
                "ffn": size.ffn,
                "init": "random" if kind == "pretrain" else "first_k",
                "teacher_layers": None,
                "freeze_word_embeddings": False,
            }
        )
        return spec.model_copy(update={"student": student})
    if s.init == "width_slice":
        raise SpecError(
            "student.init: width_slice supports BERT-family encoders; use uniform_map, "
            "every_other_layer, first_k or random for a generative teacher"
        )
    hidden = s.hidden or size.hidden
    head_dim = size.hidden // size.heads
    heads = s.heads or (size.heads if hidden == size.hidden else max(1, hidden // head_dim))
    if hidden % heads:
        raise SpecError(f"student.heads: {heads} does not divide student.hidden {hidden}")
    for field, value, most in (("hidden", hidden, size.hidden), ("heads", heads, size.heads)):
        if s.init != "random" and value > most:
            raise SpecError(
                f"student.{field}: {value} > the teacher's {most}; a teacher-initialised "
                "student can only be narrower (or use student.init: random)"
            )
    ffn = s.ffn or round(hidden * size.ffn / size.hidden)
    decoder_layers = (s.decoder_layers or s.layers) if family == "seq2seq" else None
    try:
        init_teacher_layers(s.init, size.layers, s.layers, s.teacher_layers)
        if decoder_layers is not None:
            init_teacher_layers(s.init, size.decoder_layers, decoder_layers)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if s.teacher_layers is not None and family == "seq2seq":
        raise SpecError("student.teacher_layers: not supported for seq2seq; choose student.init")
    freeze = s.freeze_word_embeddings
    if freeze is None:
        freeze = s.init != "random" and hidden == size.hidden
    elif freeze and s.init == "random":
        raise SpecError(
            "student.freeze_word_embeddings: true needs a teacher-initialised student, not init=random"
        )
    student = s.model_copy(
        update={
            "hidden": hidden,
            "heads": heads,
            "ffn": ffn,
            "decoder_layers": decoder_layers,
            "freeze_word_embeddings": freeze,
        }
    )
    return spec.model_copy(update={"student": student})
