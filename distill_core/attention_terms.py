"""MiniLM / MiniLMv2 objective terms on captured self-attention Q/K/V, shared by every
family whose blocks have Q/K/V projections: the encoder objective (`objective.LOSSES`) and
the generative one (`generative.TOKEN_LOSSES`, causal decoders and the encoder stack of
seq2seq models) register the same `ATTENTION_TERMS`, choose the layers and heads with
`attention_settings` and refuse what cannot run with `check_attention_objective`.

Q, K and V are the outputs of the attention projections (`internals.capture_qkv`), as
MiniLMv2 defines its relations on the Q/K/V vectors: before any rotary position embedding
(Llama, Mistral, Qwen, Gemma, GPT-NeoX, GPT-J, Phi) or per-head norm (Qwen3, Gemma 3). On a
rotary model `attention_kl` therefore distils the un-rotated scores q·k/sqrt(d), not the
model's own attention map. Under grouped-query attention (K and V narrower than Q),
`attention_kl` and `value_relation_kl` repeat each key/value head for the query heads that
read it, as the model does; `minilmv2_relations` re-splits each of Q, K and V into
`relation_heads` heads on its own, so their widths need not match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from distill.core import losses
from distill.core.internals import num_attention_heads, qkv_problem, qkv_widths
from distill.core.spec import JobSpec, SpecError
from distill.core.student import architecture_size

Qkv = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class AttentionSettings:
    """Which self-attention the terms compare and how they split it.

    teacher_layer / student_layer: 1-based blocks whose Q/K/V are captured (the encoder
    stack of a seq2seq model); attention_heads: query heads of both models (`attention_kl`,
    `value_relation_kl`); relation_heads: MiniLMv2 relation heads; causal: each query sees
    only keys at or before it (decoders).
    """

    teacher_layer: int
    student_layer: int
    attention_heads: int
    relation_heads: int
    causal: bool = False


def _as_query_heads(kv: torch.Tensor, q: torch.Tensor, heads: int) -> torch.Tensor:
    """K or V repeated to the query heads that read them (grouped-query attention)."""
    kv_heads, extra = divmod(heads * kv.shape[-1], q.shape[-1])
    if extra or kv_heads == 0:
        raise ValueError(
            f"key/value width {kv.shape[-1]} is not a whole number of the query width "
            f"{q.shape[-1]}'s {heads} heads"
        )
    return losses.repeat_kv_heads(kv, heads, kv_heads)


def _attention_kl(student: Qkv, teacher: Qkv, mask: torch.Tensor, s: AttentionSettings):
    (sq, sk, _), (tq, tk, _) = student, teacher
    h = s.attention_heads
    return losses.attention_kl(
        sq,
        _as_query_heads(sk, sq, h),
        tq,
        _as_query_heads(tk, tq, h),
        mask,
        num_heads=h,
        causal=s.causal,
    )


def _value_relation_kl(student: Qkv, teacher: Qkv, mask: torch.Tensor, s: AttentionSettings):
    (sq, _, sv), (tq, _, tv) = student, teacher
    h = s.attention_heads
    return losses.value_relation_kl(
        _as_query_heads(sv, sq, h), _as_query_heads(tv, tq, h), mask, num_heads=h, causal=s.causal
    )


def _minilmv2_relations(student: Qkv, teacher: Qkv, mask: torch.Tensor, s: AttentionSettings):
    terms = [
        losses.self_attention_relation_kl(
            sx, tx, mask, num_relation_heads=s.relation_heads, causal=s.causal
        )
        for sx, tx in zip(student, teacher)
    ]
    return torch.stack(terms).mean()


# name -> term(student (q, k, v), teacher (q, k, v), mask [batch, seq], settings) -> scalar
ATTENTION_TERMS: dict[str, Callable[[Qkv, Qkv, torch.Tensor, AttentionSettings], torch.Tensor]] = {
    "attention_kl": _attention_kl,
    "value_relation_kl": _value_relation_kl,
    "minilmv2_relations": _minilmv2_relations,
}
ATTENTION_LOSSES = frozenset(ATTENTION_TERMS)
SAME_HEADS_LOSSES = frozenset({"attention_kl", "value_relation_kl"})  # compared head by head


def qkv_layers(weights: dict[str, float], settings: AttentionSettings | None) -> tuple[list, list]:
    """(student layers, teacher layers), 1-based, whose Q/K/V the objective reads."""
    if settings is None or not ATTENTION_LOSSES & set(weights):
        return [], []
    return [settings.student_layer], [settings.teacher_layer]


class ReadsQkv:
    """For an objective (`weights`, `settings.attention`): the 1-based student and teacher
    blocks whose Q/K/V its attention terms read (none without such terms)."""

    weights: dict[str, float]

    @property
    def student_qkv_layers(self) -> list[int]:
        return qkv_layers(self.weights, self.settings.attention)[0]

    @property
    def teacher_qkv_layers(self) -> list[int]:
        return qkv_layers(self.weights, self.settings.attention)[1]


def attention_settings(
    spec: JobSpec,
    student_config: PretrainedConfig,
    teacher_config: PretrainedConfig,
    *,
    causal: bool,
) -> AttentionSettings | None:
    """The settings of a stage whose objective has attention terms (None otherwise): the
    teacher's `objective.attention_layer` (default its last) against the student's last
    layer, the teacher's query heads, `objective.relation_heads` (default those heads)."""
    o = spec.objective
    if not ATTENTION_LOSSES & {n for n, w in (o.weights or {}).items() if w > 0}:
        return None
    heads = num_attention_heads(teacher_config)
    return AttentionSettings(
        teacher_layer=o.attention_layer or architecture_size(teacher_config).layers,
        student_layer=architecture_size(student_config).layers,
        attention_heads=heads,
        relation_heads=o.relation_heads or heads,
        causal=causal,
    )


def check_attention_objective(
    spec: JobSpec,
    used: set[str],
    teacher_config: PretrainedConfig,
    student_config: PretrainedConfig,
) -> None:
    """Preflight of the attention terms in `used`, one-line SpecErrors: both models' Q/K/V
    must be findable (`internals.qkv_problem`), `objective.attention_layer` a teacher layer,
    `attention_kl` / `value_relation_kl` need the teacher's query-head count, and
    `relation_heads` must divide the Q, K and V widths of both models."""
    attention = used & ATTENTION_LOSSES
    if not attention:
        return
    o = spec.objective
    problem = qkv_problem(teacher_config) or qkv_problem(student_config)
    if problem:
        raise SpecError(
            f"objective.weights: {sorted(attention)} read self-attention Q/K/V, but {problem}"
        )
    depth = architecture_size(teacher_config).layers
    if o.attention_layer is not None and o.attention_layer > depth:
        raise SpecError(f"objective.attention_layer: {o.attention_layer} not in 1..{depth}")
    t_heads, s_heads = num_attention_heads(teacher_config), num_attention_heads(student_config)
    if attention & SAME_HEADS_LOSSES and s_heads != t_heads:
        raise SpecError(
            f"student.heads: attention_kl/value_relation_kl need the teacher's {t_heads} heads, "
            f"got {s_heads}; use minilmv2_relations"
        )
    if "minilmv2_relations" in attention:
        heads = o.relation_heads or t_heads
        for who, config in (("teacher", teacher_config), ("student", student_config)):
            q, k, v = qkv_widths(config)
            parts: dict[int, list[str]] = {}
            for name, width in (("Q", q), ("K", k), ("V", v)):
                parts.setdefault(width, []).append(name)
            for width, names in parts.items():
                if width % heads:
                    grouped = " (grouped-query attention: K/V are narrower)" if k < q else ""
                    raise SpecError(
                        f"objective.relation_heads: {heads} does not divide the {who}'s "
                        f"{'/'.join(names)} width {width}{grouped}"
                    )
