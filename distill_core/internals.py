"""Queries, keys and values out of HF encoders and decoders, via forward hooks.

MiniLM-style losses need each layer's Q, K and V, which no HF model returns. Rather than one
code path per class, `attention_projections` finds the projection modules inside a
transformer block by their conventional names, and `capture_qkv` hooks them for the span of
a `with` block. Works for BERT-family encoders (BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT),
GPT-2-family decoders (fused `c_attn`), BART / Llama-style `q_proj` and T5 `q`. The captured
tensors are the projection outputs, before any rotary position embedding a model may apply.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from distill.core.student import layer_list

# (query, key, value) child names, in the order they are tried.
SEPARATE_PROJECTIONS: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, XLM-R
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("q_proj", "k_proj", "v_proj"),  # BART, Llama-style
    ("q", "k", "v"),  # T5
)
FUSED_PROJECTION = "c_attn"  # GPT-2: one Conv1D producing [q | k | v]

HEAD_COUNT_FIELDS = ("num_attention_heads", "n_head", "encoder_attention_heads")


@dataclass(frozen=True)
class AttentionProjections:
    """The modules whose outputs are a block's Q, K and V: three, or one fused (split in thirds)."""

    q: nn.Module | None = None
    k: nn.Module | None = None
    v: nn.Module | None = None
    fused: nn.Module | None = None


def attention_projections(model: nn.Module, layer: int) -> AttentionProjections:
    """The Q/K/V projections of transformer block `layer` (0-based).

    Takes the first module in the block (in registration order, so self-attention before
    cross-attention) that owns children named query/key/value, q_lin/k_lin/v_lin,
    q_proj/k_proj/v_proj or q/k/v, else a fused `c_attn`. Raises ValueError naming the
    model class when none is found.
    """
    blocks = layer_list(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(
            f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} layers"
        )
    block = blocks[layer]
    for module in block.modules():
        children = dict(module.named_children())
        for names in SEPARATE_PROJECTIONS:
            if all(name in children for name in names):
                q, k, v = (children[name] for name in names)
                return AttentionProjections(q=q, k=k, v=v)
        if FUSED_PROJECTION in children:
            return AttentionProjections(fused=children[FUSED_PROJECTION])
    tried = [f"{'/'.join(n)}" for n in SEPARATE_PROJECTIONS] + [FUSED_PROJECTION]
    raise ValueError(
        f"cannot find attention projections in layer {layer} of {type(model).__name__} "
        f"(block {type(block).__name__}); looked for children named {', '.join(tried)}"
    )


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

    def fused_hook(layer: int, parts: dict[str, torch.Tensor]):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            width = output.shape[-1] // 3
            parts["q"], parts["k"], parts["v"] = output.split(width, dim=-1)
            store(layer, parts)

        return hook

    try:
        for layer in layers:
            proj = attention_projections(model, layer)
            parts: dict[str, torch.Tensor] = {}
            if proj.fused is not None:
                handles.append(proj.fused.register_forward_hook(fused_hook(layer, parts)))
            else:
                for name in ("q", "k", "v"):
                    module = getattr(proj, name)
                    handles.append(module.register_forward_hook(part_hook(layer, parts, name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def num_attention_heads(model: nn.Module | PretrainedConfig) -> int:
    """Attention-head count from a model's (or a config's) num_attention_heads / n_head /
    encoder_attention_heads."""
    config = model if isinstance(model, PretrainedConfig) else model.config
    for field in HEAD_COUNT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} has none of {', '.join(HEAD_COUNT_FIELDS)} for the head count"
    )
