"""MiniLM / MiniLMv2 attention relations for decoder (causal) and encoder-decoder teachers
on tiny models of `helpers.family_zoo`: GPT-2 (fused `c_attn`), Llama (grouped-query
`q_proj/k_proj/v_proj`, rotary) and GPT-NeoX (fused per head `query_key_value`); BART and
T5 on their encoder's self-attention. A teacher copy scores 0, another model more; the
causal mask holds (a later token changes no earlier relation row); gradients reach the
student only; training lowers the relation loss; preflight refuses what cannot run in
one line."""

from __future__ import annotations

import datasets
import pytest
import torch
from helpers.family_zoo import build_teacher, lm_tokenizer, save_teacher
from transformers import AutoConfig

from distill.core.family_registry import FAMILIES
from distill.core.internals import attention_projections, capture_qkv
from distill.core.losses import relation_kl
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.teacher import freeze

TEXTS = ["the cat sat on the mat and looked out", "a good movie", "it was a dark night"]
DECODERS = ["gpt2", "llama", "gpt_neox"]
RELATIONS = {"attention_kl": 1.0, "value_relation_kl": 1.0, "minilmv2_relations": 1.0}


def _family(model_type: str):
    return FAMILIES["seq2seq" if model_type in ("bart", "t5") else "causal"]


def _resolve(model_type: str, config, weights: dict, overrides=()):
    spec = load_spec(
        None,
        [
            "teacher.name=tiny",
            "student.layers=2",
            "student.init=uniform_map",
            f"objective.weights={weights}",
            *overrides,
        ],
    )
    return _family(model_type).resolve_stage(
        spec, "distill", config, teacher_has_weights=True, teacher_has_head=False
    )


def _setup(model_type: str, weights: dict, overrides=(), seed: int = 0):
    """(family, trainable model, frozen teacher, padded batch)."""
    tokenizer = lm_tokenizer(model_type)
    teacher = freeze(build_teacher(model_type, tokenizer, seed))
    family = _family(model_type)
    spec = _resolve(model_type, teacher.config, weights, overrides)
    model = family.trainable(spec, teacher, tokenizer).eval()  # no dropout
    tokenize, collate = family.batch_functions(tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), tokenizer, 32)
    batch = family.prepare_batch(model, collate(list(rows)), torch.Generator().manual_seed(0))
    return family, model, teacher, batch


def _parts(family, model, teacher, batch) -> dict[str, torch.Tensor]:
    return model(batch, family.teacher_outputs(model, teacher, None, batch))[1]


def _qkv_weights(model, layer: int = -1) -> list[torch.nn.Parameter]:
    proj = attention_projections(model, layer)
    return [m.weight for m in (proj.fused, proj.q, proj.k, proj.v) if m is not None]


def _sharpen(model, factor: float = 10.0) -> None:
    """Scale every block's Q/K/V projections: a random tiny model's attention is nearly
    uniform (weights of std 0.02), a trained one's is not."""
    with torch.no_grad():
        for layer in range(model.config.num_hidden_layers):
            for weight in _qkv_weights(model, layer):
                weight.mul_(factor)


COPY = ["student.layers=4", "student.init=first_k"]  # every teacher layer at full width


@pytest.mark.parametrize("model_type", [*DECODERS, "bart", "t5"])
def test_relations_of_a_teacher_copy_are_zero(model_type):
    overrides = [*COPY, "student.layers=3"] if model_type in ("bart", "t5") else COPY
    family, model, teacher, batch = _setup(model_type, {"lm_kl": 1.0, **RELATIONS}, overrides)
    student = model.student.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in teacher.state_dict().items())
    assert (batch["attention_mask"] == 0).any()  # padding is in play
    settings = model.objective.settings.attention
    assert settings.causal is (family.name == "causal")
    parts = _parts(family, model, teacher, batch)
    assert set(parts) == {"lm_kl", *RELATIONS}
    for name, value in parts.items():
        assert value.item() == pytest.approx(0.0, abs=1e-5), name


@pytest.mark.parametrize("model_type", DECODERS)
def test_relations_between_different_models_are_positive(model_type):
    # A random student of the teacher's shape; Llama's keeps 2 key/value heads.
    family, model, teacher, batch = _setup(model_type, RELATIONS, ["student.init=random"])
    _sharpen(teacher)
    parts = _parts(family, model, teacher, batch)
    for name, value in parts.items():
        assert torch.isfinite(value) and value.item() > 1e-2, name


def _rows(model, teacher, ids, mask) -> torch.Tensor:
    """The MiniLMv2 relation KL of each query [batch, seq], Q-Q, K-K and V-V averaged, on
    the Q/K/V the objective's layers produce."""
    s = model.objective.settings.attention
    with (
        capture_qkv(model.student, [s.student_layer - 1]) as student,
        capture_qkv(teacher, [s.teacher_layer - 1]) as teach,
        torch.no_grad(),
    ):
        model.student(input_ids=ids, attention_mask=mask)
        teacher(input_ids=ids, attention_mask=mask)
    rows = [
        relation_kl(
            sx, sx, tx, tx, mask, num_heads=s.relation_heads, causal=s.causal, reduction="none"
        )
        for sx, tx in zip(student[s.student_layer - 1], teach[s.teacher_layer - 1])
    ]
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("model_type", DECODERS)
def test_a_later_token_changes_no_earlier_relation_row(model_type):
    """The loss is the mean of causal per-query rows: rows before a changed token stay, the
    loss on a prefix is the mean of the full sequence's earlier rows, and a padded row
    counts its real tokens only."""
    family, model, teacher, batch = _setup(model_type, {"lm": 1.0, "minilmv2_relations": 1.0})
    _sharpen(teacher)
    ids = batch["input_ids"][:1, :8]
    ones = torch.ones_like(ids)
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 7) % model.student.config.vocab_size
    full, changed = _rows(model, teacher, ids, ones), _rows(model, teacher, other, ones)
    torch.testing.assert_close(full[:, :-1], changed[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(full[:, -1], changed[:, -1])

    def loss(ids, mask):
        one = {"input_ids": ids, "attention_mask": mask}
        with torch.no_grad():
            return _parts(family, model, teacher, one)["minilmv2_relations"]

    torch.testing.assert_close(loss(ids, ones), full.mean())
    torch.testing.assert_close(loss(ids[:, :-1], ones[:, :-1]), full[:, :-1].mean())
    padded = torch.cat([ids, ids.roll(1)], 0)  # row 1: its last token is padding
    mask = torch.cat([ones, ones], 0)
    mask[1, -1] = 0
    prefix = _rows(model, teacher, ids.roll(1)[:, :-1], ones[:, :-1])
    want = (full.sum() + prefix.sum()) / (2 * ids.shape[1] - 1)
    torch.testing.assert_close(loss(padded, mask), want)


def test_gpt2_attention_kl_is_the_kl_of_its_own_causal_attention_maps():
    """GPT-2 has no rotary embedding: the relation of captured Q and K is the model's own
    (causal, padding-masked) attention map."""
    family, model, teacher, batch = _setup("gpt2", {"attention_kl": 1.0}, ["student.layers=4"])
    got = _parts(family, model, teacher, batch)["attention_kl"]
    for m in (model.student, teacher):
        m.set_attn_implementation("eager")  # sdpa returns no attention maps
    kwargs = {"attention_mask": batch["attention_mask"], "output_attentions": True}
    with torch.no_grad():
        s_maps = model.student(batch["input_ids"], **kwargs).attentions[-1]
        t_maps = teacher(batch["input_ids"], **kwargs).attentions[-1]
    mask = batch["attention_mask"]
    seq = mask.shape[1]
    allowed = mask.bool()[:, None, None, :] & torch.ones(seq, seq).tril().bool()
    terms = torch.where(allowed, t_maps * (t_maps.log() - s_maps.log()), 0.0)
    per_query = terms.sum(-1).mean(1)
    want = (per_query * mask).sum() / mask.sum()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", DECODERS)
def test_relation_gradients_reach_the_student_only(model_type):
    family, model, teacher, batch = _setup(
        model_type, RELATIONS, ["student.hidden=16", "student.heads=4"]
    )
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}
    parts = _parts(family, model, teacher, batch)
    sum(parts.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    for weight in _qkv_weights(model.student):
        assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", DECODERS)
def test_training_steps_lower_the_relation_loss(model_type):
    weights = {"lm": 1.0, "minilmv2_relations": 1.0}
    overrides = ["student.hidden=16", "student.init=random"]
    family, model, teacher, batch = _setup(model_type, weights, overrides)
    _sharpen(teacher)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    relation = []
    for _ in range(10):
        loss, parts = model(batch, family.teacher_outputs(model, teacher, None, batch))
        relation.append(parts["minilmv2_relations"].item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert relation[-1] < 0.9 * relation[0], relation


def test_grouped_query_student_with_other_key_value_heads_distils_attention():
    """Llama: teacher 4 query / 2 key-value heads, student 4 / 1: K and V are repeated to
    the query heads that read them, so attention_kl compares head by head."""
    family, model, teacher, batch = _setup("llama", RELATIONS, ["student.kv_heads=1"])
    widths = [(p.q.out_features, p.k.out_features) for p in (
        attention_projections(model.student, -1), attention_projections(teacher, -1)
    )]  # fmt: skip
    assert widths == [(32, 8), (32, 16)]
    parts = _parts(family, model, teacher, batch)
    assert all(torch.isfinite(x) and x.item() > 0 for x in parts.values())


# --- preflight ---------------------------------------------------------------------------


def _config(model_type: str):
    return build_teacher(model_type, lm_tokenizer(model_type)).config


def test_causal_teachers_take_relations_mixed_with_token_losses():
    spec = _resolve("qwen2", _config("qwen2"), {"lm": 1, "lm_kl": 1, "minilmv2_relations": 1})
    assert spec.objective.weights == {"lm": 1, "lm_kl": 1, "minilmv2_relations": 1}
    narrow = ["student.hidden=16", "student.heads=4"]  # attention_kl: the teacher's 4 heads
    spec = _resolve("qwen2", _config("qwen2"), {"lm": 1, **RELATIONS}, narrow)
    assert (spec.student.heads, spec.student.kv_heads) == (4, 2)


@pytest.mark.parametrize(
    ("model_type", "weights", "overrides", "message"),
    [
        (
            "qwen2",
            {"minilmv2_relations": 1},
            ["objective.relation_heads=32"],
            "objective.relation_heads: 32 does not divide the teacher's K/V width 16 "
            "(grouped-query attention: K/V are narrower)",
        ),
        (
            "gpt2",
            {"lm": 1, "attention_kl": 1},
            ["student.hidden=16"],
            "student.heads: attention_kl/value_relation_kl need the teacher's 4 heads, got 2; "
            "use minilmv2_relations",
        ),
        (
            "gpt_neox",
            {"value_relation_kl": 1},
            ["objective.attention_layer=5"],
            "objective.attention_layer: 5 not in 1..4",
        ),
        (
            "t5",
            {"minilmv2_relations": 1},
            ["objective.relation_heads=3"],
            "objective.relation_heads: 3 does not divide the teacher's Q/K/V width 32",
        ),
    ],
)
def test_relations_a_teacher_cannot_take_are_one_line(model_type, weights, overrides, message):
    with pytest.raises(SpecError) as err:
        _resolve(model_type, _config(model_type), weights, overrides)
    assert str(err.value) == message


def test_relations_refused_where_a_decoders_qkv_is_unknown():
    """Phi-3 is outside the model-type table and fuses Q/K/V in `qkv_proj`, a layout distill
    does not know: preflight says so in one line."""
    config = AutoConfig.for_model(
        "phi3", vocab_size=2048, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, architectures=["Phi3ForCausalLM"],
    )  # fmt: skip
    with pytest.raises(SpecError) as err:
        _resolve("phi3", config, {"lm": 1, "minilmv2_relations": 1})
    message = str(err.value)
    assert message.startswith(
        "objective.weights: ['minilmv2_relations'] read self-attention Q/K/V, but phi3 is not "
        "in distill's model-type table and its Q/K/V were not found"
    )
    assert "\n" not in message


def test_relations_bypass_the_teacher_cache_and_required_is_refused(tmp_path):
    from distill.cluster.cache_store import resolve_cache
    from distill.cluster.storage import LocalStorage

    teacher = save_teacher("llama", tmp_path / "llama", None)
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS * 4) + "\n")
    weights = "objective.weights={lm: 1, lm_kl: 1, minilmv2_relations: 1}"
    base = [f"teacher.name={teacher}", f"data.train.path={data}", "student.layers=2", weights]
    family = FAMILIES["causal"]
    plan, reason = family.cache_plan(
        load_spec(None, base), AutoConfig.from_pretrained(teacher), ["input_ids"]
    )
    assert plan is None and reason == "['minilmv2_relations'] read the teacher's Q/K/V on the fly"
    storage = LocalStorage(tmp_path / "run")
    assert resolve_cache(load_spec(None, [*base, "teacher.cache.mode=auto"]), storage) == (
        None,
        reason,
    )
    with pytest.raises(SpecError) as err:
        resolve_cache(load_spec(None, [*base, "teacher.cache.mode=required"]), storage)
    assert str(err.value) == f"teacher.cache: mode required, but this job cannot use one: {reason}"
