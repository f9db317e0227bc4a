"""Q/K/V capture by forward hooks, checked against the models' own attention maps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import (
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    RobertaConfig,
    RobertaModel,
)

from distill.core.internals import attention_projections, capture_qkv, num_attention_heads

TINY = dict(hidden=32, layers=2, vocab=99, heads=4)


def _seeded(build):
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = build()
    return model.eval()


def _roberta() -> nn.Module:
    config = RobertaConfig(
        vocab_size=TINY["vocab"],
        hidden_size=TINY["hidden"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    return _seeded(lambda: RobertaModel(config))


def _distilbert() -> nn.Module:
    config = DistilBertConfig(
        vocab_size=TINY["vocab"],
        dim=TINY["hidden"],
        n_layers=TINY["layers"],
        n_heads=TINY["heads"],
        hidden_dim=64,
        max_position_embeddings=64,
    )
    return _seeded(lambda: DistilBertModel(config))


def _gpt2() -> nn.Module:
    config = GPT2Config(
        vocab_size=TINY["vocab"],
        n_embd=TINY["hidden"],
        n_layer=TINY["layers"],
        n_head=TINY["heads"],
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _seeded(lambda: GPT2Model(config))


@pytest.fixture(params=["bert", "roberta", "distilbert", "gpt2"])
def model_case(request, tiny_bert):
    """(model, causal) for each architecture family; eager attention so maps are returned."""
    builders = {
        "bert": lambda: tiny_bert,
        "roberta": _roberta,
        "distilbert": _distilbert,
        "gpt2": _gpt2,
    }
    model = builders[request.param]()
    # transformers 5 defaults to sdpa, which returns no attention maps for output_attentions.
    model.set_attn_implementation("eager")
    return model, request.param == "gpt2"


IDS = torch.tensor([[5, 10, 11, 12, 13, 14], [5, 20, 21, 22, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def _attention_from_qk(q, k, mask, num_heads, causal):
    """softmax(q kᵀ / sqrt(d) + mask) per head, as every eager attention computes it."""
    batch, seq, width = q.shape
    d = width // num_heads
    q_h = q.view(batch, seq, num_heads, d).transpose(1, 2)
    k_h = k.view(batch, seq, num_heads, d).transpose(1, 2)
    scores = q_h @ k_h.transpose(-1, -2) / math.sqrt(d)
    allowed = mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)


def test_num_attention_heads_reads_each_config_spelling(model_case):
    model, _ = model_case
    assert num_attention_heads(model) == TINY["heads"]
    assert num_attention_heads(model.config) == TINY["heads"]


def test_captured_shapes(model_case):
    model, _ = model_case
    with capture_qkv(model, [0, 1]) as qkv, torch.no_grad():
        model(IDS, attention_mask=MASK)
    assert sorted(qkv) == [0, 1]
    for q, k, v in qkv.values():
        for x in (q, k, v):
            assert x.shape == (2, 6, TINY["hidden"])
        assert not torch.equal(q, k) and not torch.equal(k, v)


def test_attention_from_captured_qk_equals_models_own(model_case):
    model, causal = model_case
    with capture_qkv(model, [0, 1]) as qkv, torch.no_grad():
        out = model(IDS, attention_mask=MASK, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    real_queries = MASK.bool()[:, None, :, None]  # padded query rows differ between models
    for layer, (q, k, _) in qkv.items():
        ours = _attention_from_qk(q, k, MASK, num_attention_heads(model), causal)
        theirs = out.attentions[layer]
        torch.testing.assert_close(ours * real_queries, theirs * real_queries, atol=1e-5, rtol=1e-5)
        # The padded keys really were masked: no probability mass on them.
        assert torch.all(theirs[1, :, :4, 4:] == 0)


def test_gpt2_captured_thirds_are_the_fused_projection():
    model = _gpt2()
    seen = []
    handle = model.h[1].attn.c_attn.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with capture_qkv(model, [1]) as qkv, torch.no_grad():
            model(IDS, attention_mask=MASK)
    finally:
        handle.remove()
    q, k, v = qkv[1]
    assert torch.equal(torch.cat([q, k, v], dim=-1), seen[0])


def test_hooks_removed_after_context(model_case):
    model, _ = model_case
    modules = list(model.modules())
    with capture_qkv(model, [0, 1]) as qkv, torch.no_grad():
        assert sum(len(m._forward_hooks) for m in modules) > 0
        model(IDS, attention_mask=MASK)
    assert all(len(m._forward_hooks) == 0 for m in modules)
    before = {layer: tuple(t.clone() for t in x) for layer, x in qkv.items()}
    with torch.no_grad():
        model(IDS.flip(1), attention_mask=MASK)
    for layer, x in qkv.items():
        assert all(torch.equal(a, b) for a, b in zip(x, before[layer]))


def test_hooks_removed_when_forward_raises(tiny_bert):
    modules = list(tiny_bert.modules())
    with pytest.raises(RuntimeError, match="boom"), capture_qkv(tiny_bert, [0]):
        raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in modules)


def test_captured_tensors_keep_the_graph():
    model = _distilbert()
    with capture_qkv(model, [1]) as qkv:
        model(IDS, attention_mask=MASK)
    q, k, v = qkv[1]
    (q.sum() + k.sum() + v.sum()).backward()
    proj = attention_projections(model, 1)
    assert proj.q.weight.grad is not None and proj.q.weight.grad.abs().sum() > 0


def test_projection_lookup_by_family(tiny_bert):
    bert = attention_projections(tiny_bert, 0)
    assert bert.q is tiny_bert.encoder.layer[0].attention.self.query
    assert bert.v is tiny_bert.encoder.layer[0].attention.self.value and bert.fused is None
    distil = _distilbert()
    assert attention_projections(distil, 1).k is distil.transformer.layer[1].attention.k_lin
    gpt2 = _gpt2()
    found = attention_projections(gpt2, -1)
    assert found.fused is gpt2.h[1].attn.c_attn and found.q is None


def test_unknown_architecture_names_the_class():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq = nn.Linear(4, 4)

    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"num_hidden_layers": 2})()
            self.blocks = nn.ModuleList([Block(), Block()])

    with pytest.raises(ValueError, match="Mystery"):
        attention_projections(Mystery(), 0)
    with pytest.raises(ValueError, match="out of range"):
        attention_projections(Mystery(), 2)
