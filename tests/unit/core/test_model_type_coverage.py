"""Every model type in the table works as teacher and as student: a tiny random teacher of
each (`helpers.family_zoo`), saved with a real tokenizer, goes through the family's preflight
(with its default objective), builds a 2-layer student, trains five steps on one batch
(the loss falls), exports, and reloads with the family's Auto class reproducing the probe
outputs. Every type also runs the MiniLMv2 relation objective, which reads its Q/K/V
(decoders: causal relations, with the LM loss; encoder-decoders: the encoder's). Bad shapes
are refused in one line by the family's preflight."""

from __future__ import annotations

import pytest
import torch
from helpers.family_steps import TEXTS, train_on_one_batch
from helpers.family_zoo import (
    AUTO,
    DECODERS,
    ENCODERS,
    MODEL_TYPES,
    SEQ2SEQ,
    family_name,
    lm_tokenizer,
    save_teacher,
    tiny_config,
)
from transformers import AutoConfig, AutoTokenizer

from distill.core.family_registry import family_of
from distill.core.internals import capture_qkv, qkv_problem, qkv_widths
from distill.core.model_types import MODEL_TYPES as TABLE
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.student import architecture_size
from distill.core.teacher import freeze

DEFAULTS = {
    "encoder": {"hidden_mse": 1.0, "pooled_cosine": 1.0},
    "causal": {"lm_kl": 1.0, "lm": 1.0},
    "seq2seq": {"lm_kl": 1.0, "lm": 1.0},
}


def _resolve(folder: str, teacher, overrides: list[str]):
    family = family_of(teacher.config)
    spec = load_spec(None, [f"teacher.name={folder}", *overrides])
    return family, family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )


def _train_export_reload(family, spec, teacher, tokenizer, out):
    """Five steps on one batch; the losses, and the max |probe - reloaded export's probe|."""
    model = family.trainable(spec, teacher, tokenizer).eval()  # no dropout: one batch must fit
    losses = train_on_one_batch(family, spec, model, teacher, tokenizer)
    probe = family.export(model, tokenizer, out, max_length=32, st_teacher=None)
    reloaded = AUTO[family.name].from_pretrained(out).eval()
    assert type(reloaded).__name__ == type(model.student).__name__
    again = family.export(
        type(model)(reloaded, model.objective, *_extras(model)),
        AutoTokenizer.from_pretrained(out),
        out.parent / f"{out.name}-again",
        max_length=32,
        st_teacher=None,
    )
    return losses, float((again - probe).abs().max())


def _extras(model):
    return (model.batch_ids,) if hasattr(model, "batch_ids") else ()


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_model_type_distils_with_its_default_objective(model_type, tiny_tokenizer, tmp_path):
    folder = save_teacher(model_type, tmp_path / model_type, tiny_tokenizer)
    teacher = freeze(family_of(AutoConfig.from_pretrained(folder)).load_model(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    family, spec = _resolve(
        folder, teacher, ["student.layers=2", "student.hidden=16", "student.init=uniform_map"]
    )
    assert family.name == family_name(model_type)
    assert spec.objective.weights == DEFAULTS[family.name]

    config = family.output_config(spec, "distill", teacher.config)
    size = architecture_size(config)
    assert (size.layers, size.hidden, size.heads) == (2, 16, 2)  # the teacher's head size
    types = getattr(config, "layer_types", None)
    if isinstance(getattr(teacher.config, "layer_types", None), list):
        assert types == [teacher.config.layer_types[i] for i in (0, 3)]  # uniform_map's layers

    losses, diff = _train_export_reload(family, spec, teacher, tokenizer, tmp_path / "export")
    assert losses[-1] < losses[0], losses
    assert diff < 1e-4


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_model_type_distils_attention_relations_through_its_qkv(
    model_type, tiny_tokenizer, tmp_path
):
    folder = save_teacher(model_type, tmp_path / model_type, tiny_tokenizer)
    teacher = freeze(family_of(AutoConfig.from_pretrained(folder)).load_model(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = "" if model_type in ENCODERS else "lm: 1.0, "
    family, spec = _resolve(
        folder,
        teacher,
        [
            "student.layers=2",
            "student.hidden=16",
            f"objective.weights={{{lm}minilmv2_relations: 1.0, attention_kl: 0.0}}",
        ],
    )
    assert spec.student.heads == 2  # the teacher's head size kept
    model = family.trainable(spec, teacher, tokenizer)
    settings = model.objective.settings.attention
    assert settings.causal is (family.name == "causal")
    assert (settings.student_layer, settings.teacher_layer) == (
        2,
        architecture_size(teacher.config).layers,
    )
    losses, _ = _train_export_reload(family, spec, teacher, tokenizer, tmp_path / "export")
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_qkv_capture_matches_each_types_head_layout(model_type, tiny_tokenizer):
    """Q/K/V of every type have [batch, seq, heads x head size] (narrower K/V under GQA)."""
    tokenizer = tiny_tokenizer if model_type in ENCODERS else lm_tokenizer(model_type)
    config = tiny_config(model_type, tokenizer)
    assert qkv_problem(config) is None
    torch.manual_seed(0)
    model = AUTO[family_name(model_type)].from_config(config).eval()
    ids = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    kwargs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    if model_type in SEQ2SEQ:
        kwargs["decoder_input_ids"] = ids["input_ids"]
    with capture_qkv(model, [1]) as captured:
        model(**kwargs)
    q, k, v = captured[1]
    assert qkv_widths(config) == (q.shape[-1], k.shape[-1], v.shape[-1])
    size = architecture_size(config)
    entry = TABLE[model_type]
    head = (entry.read(config, "head_dim") if entry.head_dim else None) or size.hidden // 4
    assert q.shape == (2, ids["input_ids"].shape[1], size.heads * head)
    assert k.shape == v.shape == (2, q.shape[1], (size.kv_heads or size.heads) * head)


def test_gpt_neox_per_head_split_matches_its_attention():
    """The fused per-head layout gives the queries GPT-NeoX's own attention uses."""
    tokenizer = lm_tokenizer("gpt_neox")
    torch.manual_seed(0)
    model = AUTO["causal"].from_config(tiny_config("gpt_neox", tokenizer)).eval()
    x = torch.randn(1, 5, 32)
    fused = model.gpt_neox.layers[0].attention.query_key_value(x)
    own_q = fused.view(1, 5, 4, 24).chunk(3, dim=-1)[0].reshape(1, 5, 32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with capture_qkv(model, [0]) as captured:
        model(input_ids=ids)
    hidden = model.gpt_neox.layers[0].input_layernorm(model.gpt_neox.embed_in(ids))
    expected = model.gpt_neox.layers[0].attention.query_key_value(hidden)
    q = expected.view(1, 5, 4, 24).chunk(3, dim=-1)[0].reshape(1, 5, 32)
    assert torch.allclose(captured[0][0], q) and own_q.shape == q.shape


@pytest.mark.parametrize(
    ("model_type", "overrides", "message"),
    [
        ("llama", ["student.heads=3", "student.hidden=24"], r"^student.heads: 3 is not a multiple"),
        ("llama", ["student.kv_heads=3"], r"^student.kv_heads: 3 does not divide student.heads 4"),
        ("bert", ["student.kv_heads=2"], r"^student.kv_heads: the teacher has no grouped-query"),
        ("bert", ["student.hidden=30", "student.heads=4"], r"does not divide student.hidden 30"),
        ("distilbert", ["student.init=width_slice"], r"^student.init: width_slice supports"),
        (
            "qwen2",
            [
                "student.layers=2",
                "objective.weights={minilmv2_relations: 1}",
                "objective.relation_heads=32",
            ],
            r"^objective.relation_heads: 32 does not divide the teacher's K/V width 16",
        ),
    ],
)
def test_shapes_and_objectives_a_type_cannot_take_are_one_line(
    model_type, overrides, message, tiny_tokenizer, tmp_path
):
    folder = save_teacher(model_type, tmp_path / model_type, tiny_tokenizer)
    config = AutoConfig.from_pretrained(folder)
    with pytest.raises(SpecError, match=message) as err:
        family = family_of(config)
        spec = load_spec(None, [f"teacher.name={folder}", *overrides])
        family.resolve_stage(
            spec, "distill", config, teacher_has_weights=True, teacher_has_head=False
        )
    assert "\n" not in str(err.value)


def test_attention_relations_refused_where_qkv_is_unknown(tiny_tokenizer):
    """DeBERTa (v1) fuses Q/K/V in its own layout: the table says so, preflight refuses."""
    config = AutoConfig.for_model(
        "deberta", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64,
    )  # fmt: skip
    spec = load_spec(None, ["objective.weights={minilmv2_relations: 1}", "student.layers=1"])
    with pytest.raises(SpecError, match=r"^objective.weights: \['minilmv2_relations'\] read "):
        family_of(config).resolve_stage(
            spec, "distill", config, teacher_has_weights=True, teacher_has_head=False
        )


def test_decoder_families_listed():
    assert {family_name(t) for t in DECODERS} == {"causal"}
    assert set(MODEL_TYPES) <= set(TABLE)


@pytest.mark.parametrize("model_type", sorted({**DECODERS, **SEQ2SEQ}))
def test_lm_head_reproduces_each_types_own_logits(model_type):
    """The chunked token losses build logits from hidden states with `lm_head`: they must be
    the model's own (T5 scales tied decoder outputs, Gemma 2 soft-caps, BART adds a bias)."""
    from distill.core.generative import lm_head, shift_right, target_hidden

    tokenizer = lm_tokenizer(model_type)
    torch.manual_seed(0)
    model = AUTO[family_name(model_type)].from_config(tiny_config(model_type, tokenizer)).eval()
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    kwargs = dict(batch)
    if model_type in SEQ2SEQ:
        labels = enc["input_ids"]
        batch["labels"] = labels
        batch["decoder_input_ids"] = shift_right(labels, tokenizer.pad_token_id, 0)
        kwargs["decoder_input_ids"] = batch["decoder_input_ids"]
    with torch.no_grad():
        hidden, _ = target_hidden(model, batch)
        own = model(**kwargs).logits
        ours = lm_head(model)(hidden)
    assert torch.allclose(ours, own, atol=1e-5), (ours - own).abs().max()


@pytest.mark.parametrize(
    ("model_type", "path", "layout"),
    [
        ("gpt_neox", "gpt_neox.layers.{i}.attention.query_key_value", "per_head"),
        ("modernbert", "layers.{i}.attn.Wqkv", "thirds"),
        ("gpt2", "transformer.h.{i}.attn.c_attn", "thirds_conv1d"),
    ],
)
def test_narrow_student_keeps_the_leading_heads_of_fused_qkv(
    model_type, path, layout, tiny_tokenizer
):
    """A 2-of-4-head student's fused projection holds q, k and v of teacher heads 0 and 1."""
    from distill.core.student import StudentSize, build_student

    tokenizer = tiny_tokenizer if model_type in ENCODERS else lm_tokenizer(model_type)
    teacher = AUTO[family_name(model_type)].from_config(tiny_config(model_type, tokenizer))
    size = StudentSize(layers=2, hidden=16, heads=2, ffn=32)
    student = build_student(teacher, size, init="first_k", auto_class=AUTO[family_name(model_type)])
    for i in range(2):
        t = teacher.get_submodule(path.format(i=i)).weight.detach()
        s = student.get_submodule(path.format(i=i)).weight.detach()
        if layout == "per_head":  # [heads * (q_h, k_h, v_h) * 8, in]
            expected = t.view(4, 3, 8, 32)[:2, :, :, :16].reshape(48, 16)
        elif layout == "thirds":  # [q | k | v] rows of [32, in]
            expected = torch.cat([part[:16, :16] for part in t.chunk(3, dim=0)])
        else:  # Conv1D: [in, q | k | v]
            expected = torch.cat([part[:16, :16] for part in t.chunk(3, dim=1)], dim=1)
        assert torch.equal(s, expected)


def test_student_configs_use_each_types_field_names():
    from distill.core.student import StudentSize, student_config

    bpe = lm_tokenizer("t5")
    t5 = student_config(tiny_config("t5", bpe), StudentSize(2, 16, 2, 32, 1))
    assert (t5.num_layers, t5.num_decoder_layers, t5.d_model, t5.num_heads, t5.d_ff, t5.d_kv) == (
        2, 1, 16, 2, 32, 8,
    )  # fmt: skip
    gemma = student_config(tiny_config("gemma", lm_tokenizer("gemma")), StudentSize(2, 16, 1, 32))
    assert (gemma.head_dim, gemma.num_key_value_heads) == (16, 1)  # Gemma's own head size kept
    qwen2 = tiny_config("qwen2", lm_tokenizer("qwen2"))
    small = student_config(qwen2, StudentSize(2, 32, 4, 64, kv_heads=2), teacher_layers=[1, 3])
    assert small.layer_types == ["sliding_attention", "sliding_attention"]
