"""Queries, keys and values out of HF encoders and decoders, via forward hooks.

MiniLM-style losses need each layer's Q, K and V, which no HF model returns. The model-type
table (`distill.core.model_types`) says, per model type, which children of a block's
attention module produce them: three projections (BERT `query/key/value`, DistilBERT
`q_lin/...`, DeBERTa-v2 `query_proj/...`, Llama-style `q_proj/...`, MPNet and T5 `q/k/v`) or
one fused projection split into thirds (GPT-2 `c_attn`, ModernBERT `Wqkv`) or per head
(GPT-NeoX `query_key_value`). `capture_qkv` hooks them for the span of a `with` block. The
captured tensors are the projection outputs, before any rotary position embedding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from distill.core.model_types import (
    BERT_QKV,
    DEBERTA_QKV,
    DISTILBERT_QKV,
    GPT2_QKV,
    MODEL_TYPES,
    MODERNBERT_QKV,
    NEOX_QKV,
    PROJ_QKV,
    SHORT_QKV,
    QkvLayout,
    model_type_name,
    model_type_of,
)
from distill.core.student import architecture_size, layer_list

# Tried in this order for a model type the table does not know.
KNOWN_LAYOUTS: tuple[QkvLayout, ...] = (
    BERT_QKV, DISTILBERT_QKV, DEBERTA_QKV, PROJ_QKV, SHORT_QKV, GPT2_QKV, MODERNBERT_QKV,
    NEOX_QKV,
)  # fmt: skip

HEAD_COUNT_FIELDS = ("num_attention_heads", "n_head", "encoder_attention_heads")


@dataclass(frozen=True)
class AttentionProjections:
    """The modules whose outputs are a block's Q, K and V: three, or one fused module whose
    output `layout` splits."""

    q: nn.Module | None = None
    k: nn.Module | None = None
    v: nn.Module | None = None
    fused: nn.Module | None = None
    layout: QkvLayout | None = None


def _layouts(model: nn.Module) -> tuple[QkvLayout, ...]:
    config = getattr(model, "config", None)
    known = MODEL_TYPES.get(getattr(config, "model_type", None) or "")
    if known is not None:
        return (known.qkv,) if known.qkv is not None else ()
    return KNOWN_LAYOUTS


def attention_projections(model: nn.Module, layer: int) -> AttentionProjections:
    """The Q/K/V projections of transformer block `layer` (0-based).

    Takes the first module in the block (in registration order, so self-attention before
    cross-attention) that owns the children the model type's `QkvLayout` names (every known
    layout for a type outside the table). Raises ValueError naming the model class when none
    is found.
    """
    blocks = layer_list(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(
            f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} layers"
        )
    block = blocks[layer]
    layouts = _layouts(model)
    for module in block.modules():
        children = dict(module.named_children())
        for layout in layouts:
            if not all(name in children for name in layout.names):
                continue
            if layout.fused:
                return AttentionProjections(fused=children[layout.names[0]], layout=layout)
            q, k, v = (children[name] for name in layout.names)
            return AttentionProjections(q=q, k=k, v=v, layout=layout)
    tried = ", ".join(layout.describe() for layout in layouts) or "nothing (no layout known)"
    raise ValueError(
        f"cannot find attention projections in layer {layer} of {type(model).__name__} "
        f"(block {type(block).__name__}); looked for children named {tried}"
    )


def qkv_problem(config: PretrainedConfig) -> str | None:
    """Why attention-relation objectives cannot read Q/K/V from a model of `config` (one
    line naming the model type), or None when they can. A type outside the table is checked
    on a weightless (meta-device) copy of its architecture."""
    entry = MODEL_TYPES.get(getattr(config, "model_type", None) or "")
    name = model_type_name(config)
    if entry is not None:
        if entry.qkv is None:
            return f"{name} has no separate or fused Q/K/V projections distill can read"
        return None
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
        attention_projections(model, 0)
    except Exception as exc:  # any failure to build or find them: the objective cannot run
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return (
            f"{name} is not in distill's model-type table and its Q/K/V were not found ({reason})"
        )
    return None


def qkv_widths(config: PretrainedConfig) -> tuple[int, int, int]:
    """(Q, K, V) widths of a block's captured projections: heads x head size, and key/value
    heads x head size for K and V (narrower under grouped-query attention). The head size is
    the config's own (Gemma, Qwen3, T5 `d_kv`) or hidden / heads."""
    entry = model_type_of(config)
    size = architecture_size(config)
    head_dim = entry.read(config, "head_dim") if entry.head_dim else None
    head_dim = head_dim or size.hidden // size.heads
    kv = size.kv_heads or size.heads
    return size.heads * head_dim, kv * head_dim, kv * head_dim


@contextmanager
def capture_qkv(
    model: nn.Module, layers: Sequence[int]
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Hook the Q/K/V projections of `layers`; yield {layer: (q, k, v)} filled by each forward.

    Each tensor is [batch, seq, all_head_size] (k and v are narrower under grouped-query
    attention) and stays in the autograd graph. After a forward pass the dict holds that
    pass's tensors. Hooks are removed on exit, also when the block raises.
    """
    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    handles = []

    def store(layer: int, parts: dict[str, torch.Tensor]) -> None:
        if len(parts) == 3:
            captured[layer] = (parts["q"], parts["k"], parts["v"])

    def part_hook(layer: int, parts: dict[str, torch.Tensor], name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            parts[name] = output
            store(layer, parts)

        return hook

    def fused_hook(layer: int, parts: dict[str, torch.Tensor], layout: QkvLayout, heads: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if layout.fused == "per_head":  # [..., heads * (q_h | k_h | v_h)]
                split = output.unflatten(-1, (heads, 3, -1))
                parts["q"], parts["k"], parts["v"] = (
                    split[..., i, :].flatten(-2) for i in range(3)
                )
            else:
                parts["q"], parts["k"], parts["v"] = output.chunk(3, dim=-1)
            store(layer, parts)

        return hook

    try:
        for layer in layers:
            proj = attention_projections(model, layer)
            parts: dict[str, torch.Tensor] = {}
            if proj.fused is not None:
                hook = fused_hook(layer, parts, proj.layout, num_attention_heads(model))
                handles.append(proj.fused.register_forward_hook(hook))
            else:
                for name in ("q", "k", "v"):
                    module = getattr(proj, name)
                    handles.append(module.register_forward_hook(part_hook(layer, parts, name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def num_attention_heads(model: nn.Module | PretrainedConfig) -> int:
    """Attention-head count from a model's (or a config's) model-type entry, else its
    num_attention_heads / n_head / encoder_attention_heads."""
    config = model if isinstance(model, PretrainedConfig) else model.config
    entry = MODEL_TYPES.get(getattr(config, "model_type", None) or "")
    if entry is not None and isinstance(getattr(config, entry.heads, None), int):
        return getattr(config, entry.heads)
    for field in HEAD_COUNT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} has none of {', '.join(HEAD_COUNT_FIELDS)} for the head count"
    )
