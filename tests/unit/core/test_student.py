"""Student construction: layer-init strategies, weight copying, width slicing (leading and
importance-ranked), freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from distill.core.losses import masked_mean_pool
from distill.core.student import (
    STUDENT_INITS,
    StudentSize,
    activation_stats,
    build_student,
    every_other_layer,
    ffn_scores,
    first_k,
    head_scores,
    hidden_channel_scores,
    init_teacher_layers,
    uniform_map,
    width_slice_plan,
)

SAME_WIDTH = StudentSize(layers=2, hidden=32, heads=4, ffn=64)
NARROW = StudentSize(layers=2, hidden=16, heads=2, ffn=32)

# --- layer choice --------------------------------------------------------------


def test_layer_strategies_by_hand():
    assert every_other_layer(6, 3) == [0, 2, 4]
    assert uniform_map(7, 4) == [0, 2, 4, 6]
    assert uniform_map(6, 1) == [5]
    assert first_k(6, 3) == [0, 1, 2]
    assert init_teacher_layers("random", 6, 3) is None
    assert init_teacher_layers("first_k", 6, 3, explicit=[5, 0, 3]) == [5, 0, 3]


def test_every_other_layer_needs_a_deep_enough_teacher():
    with pytest.raises(ValueError, match="student.init=every_other_layer"):
        every_other_layer(4, 3)


def test_unknown_init_names_the_field_and_choices():
    with pytest.raises(ValueError, match="student.init: unknown 'bogus'") as err:
        init_teacher_layers("bogus", 6, 3)
    assert "every_other_layer" in str(err.value)


@pytest.mark.parametrize("explicit", [[0, 1], [0, 1, 6], [-1, 0, 1]])
def test_bad_explicit_layers_name_the_field(explicit):
    with pytest.raises(ValueError, match="student.teacher_layers"):
        init_teacher_layers("every_other_layer", 6, 3, explicit=explicit)


def test_first_k_deeper_than_teacher_names_the_field(tiny_bert):
    with pytest.raises(ValueError, match="student.init"):
        build_student(tiny_bert, StudentSize(layers=5, hidden=32, heads=4, ffn=64), init="first_k")


# --- weight copying ----------------------------------------------------------------


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize(
    ("init", "explicit", "expected"),
    [
        ("every_other_layer", None, [0, 2]),
        ("uniform_map", None, [0, 3]),
        ("first_k", [3, 1], [3, 1]),
    ],
)
def test_student_layers_equal_chosen_teacher_layers(tiny_bert, init, explicit, expected):
    student = build_student(tiny_bert, SAME_WIDTH, init=init, teacher_layers=explicit)
    for i, t in enumerate(expected):
        s_block, t_block = _params(student.encoder.layer[i]), _params(tiny_bert.encoder.layer[t])
        assert s_block.keys() == t_block.keys()
        assert all(torch.equal(s_block[k], t_block[k]) for k in s_block)
    t_all = _params(tiny_bert)
    for name, p in _params(student).items():
        if not name.startswith("encoder."):
            assert torch.equal(p, t_all[name]), name


def test_narrow_student_takes_the_leading_block(tiny_bert):
    student = build_student(tiny_bert, NARROW, init="every_other_layer")
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2
    s, t = student.encoder.layer[1], tiny_bert.encoder.layer[2]
    q_s, q_t = s.attention.self.query, t.attention.self.query
    assert torch.equal(q_s.weight, q_t.weight[:16, :16]) and torch.equal(q_s.bias, q_t.bias[:16])
    assert torch.equal(s.intermediate.dense.weight, t.intermediate.dense.weight[:32, :16])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[:16, :32])
    emb_s, emb_t = (
        student.embeddings.word_embeddings.weight,
        tiny_bert.embeddings.word_embeddings.weight,
    )
    assert emb_s.shape == (99, 16) and torch.equal(emb_s, emb_t[:, :16])


def test_random_init_differs_from_teacher(tiny_bert):
    student = build_student(tiny_bert, SAME_WIDTH, init="random")
    q = student.encoder.layer[0].attention.self.query.weight
    assert not any(torch.equal(q, t.attention.self.query.weight) for t in tiny_bert.encoder.layer)
    assert not torch.equal(
        student.embeddings.word_embeddings.weight, tiny_bert.embeddings.word_embeddings.weight
    )


def test_build_is_reproducible_for_a_seed(tiny_bert):
    a, b = (build_student(tiny_bert, SAME_WIDTH, init="random", seed=3) for _ in range(2))
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_heads_must_divide_hidden(tiny_bert):
    with pytest.raises(ValueError, match="student.heads: 3 does not divide student.hidden 16"):
        build_student(tiny_bert, StudentSize(layers=2, hidden=16, heads=3, ffn=32))


@pytest.mark.parametrize("size", [SAME_WIDTH, NARROW])
def test_teacher_is_untouched_by_build(tiny_bert, size):
    before = _params(tiny_bert)
    student = build_student(tiny_bert, size, init="every_other_layer")
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # a student update must not leak into the teacher
    after = _params(tiny_bert)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tiny_bert.config.num_hidden_layers == 4 and tiny_bert.config.hidden_size == 32


def test_frozen_teacher_has_no_trainable_parameter(tiny_bert):
    assert not tiny_bert.training
    assert all(not p.requires_grad for p in tiny_bert.parameters())
    student = build_student(tiny_bert, NARROW)
    assert all(p.requires_grad for p in student.parameters())


# --- width_slice ---------------------------------------------------------------------------

WEAK = torch.arange(0, 32, 2)  # residual channels the doctored teacher barely uses
STRONG = torch.arange(1, 32, 2)


@torch.no_grad()
def _doctored_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """A copy of `teacher` whose even residual channels, heads 0 and 2 of every layer and
    FFN neurons 0..31 of every layer are scaled down 20x: we know what matters."""
    t = copy.deepcopy(teacher)
    for name, p in t.named_parameters():
        if name.endswith(("LayerNorm.weight", "LayerNorm.bias")) or "embeddings." in name:
            p[..., WEAK] *= 0.05
    for block in t.encoder.layer:
        block.attention.output.dense.weight[:, 0:8] *= 0.05
        block.attention.output.dense.weight[:, 16:24] *= 0.05
        block.output.dense.weight[:, :32] *= 0.05
    return t


def test_width_slice_at_full_width_is_the_plain_copy(tiny_bert):
    sliced = _params(build_student(tiny_bert, SAME_WIDTH, init="width_slice"))
    plain = _params(build_student(tiny_bert, SAME_WIDTH, init="uniform_map"))
    assert sliced.keys() == plain.keys()
    assert all(torch.equal(sliced[k], plain[k]) for k in sliced)


def test_width_slice_scores_by_hand():
    block = {"attention.output.dense.weight": torch.tensor([[3.0, 0.0, 1.0, 1.0]])}
    assert torch.allclose(head_scores(block, 2), torch.tensor([3.0, 2.0**0.5]))
    assert torch.equal(
        ffn_scores({"output.dense.weight": torch.tensor([[3.0, 0.0], [4.0, 1.0]])}),
        torch.tensor([5.0, 1.0]),
    )


def test_width_slice_keeps_the_top_scored_channels_heads_and_neurons(tiny_bert):
    teacher = _doctored_teacher(tiny_bert)
    plan = width_slice_plan(teacher, NARROW, [0, 3])
    assert torch.equal(plan.hidden, STRONG)
    assert torch.equal(
        plan.hidden, hidden_channel_scores(teacher, [0, 3]).topk(16).indices.sort().values
    )
    assert all(torch.equal(h, torch.tensor([1, 3])) for h in plan.heads)
    assert all(torch.equal(f, torch.arange(32, 64)) for f in plan.ffn)

    student = build_student(teacher, NARROW, init="width_slice")
    assert plan.teacher_layers == uniform_map(4, 2) == [0, 3]
    s, t = student.encoder.layer[1], teacher.encoder.layer[3]
    head_rows = torch.cat([torch.arange(8, 16), torch.arange(24, 32)])
    q_s, q_t = s.attention.self.query, t.attention.self.query
    assert torch.equal(q_s.weight, q_t.weight[head_rows][:, STRONG])
    assert torch.equal(q_s.bias, q_t.bias[head_rows])
    o_s, o_t = s.attention.output.dense, t.attention.output.dense
    assert torch.equal(o_s.weight, o_t.weight[STRONG][:, head_rows])
    assert torch.equal(s.intermediate.dense.weight, t.intermediate.dense.weight[32:][:, STRONG])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[STRONG][:, 32:])
    assert torch.equal(s.output.LayerNorm.bias, t.output.LayerNorm.bias[STRONG])
    emb_s, emb_t = student.embeddings, teacher.embeddings
    assert torch.equal(emb_s.word_embeddings.weight, emb_t.word_embeddings.weight[:, STRONG])
    assert torch.equal(
        emb_s.position_embeddings.weight, emb_t.position_embeddings.weight[:, STRONG]
    )
    assert torch.equal(emb_s.LayerNorm.weight, emb_t.LayerNorm.weight[STRONG])
    assert torch.equal(student.pooler.dense.weight, teacher.pooler.dense.weight[STRONG][:, STRONG])


def test_width_slice_explicit_teacher_layers(tiny_bert):
    student = build_student(tiny_bert, NARROW, init="width_slice", teacher_layers=[2, 1])
    plan = width_slice_plan(tiny_bert, NARROW, [2, 1])
    t, ffn = tiny_bert.encoder.layer[1], plan.ffn[1]
    expected = t.intermediate.dense.weight[ffn][:, plan.hidden]
    assert torch.equal(student.encoder.layer[1].intermediate.dense.weight, expected)


def test_width_slice_build_keeps_the_student_config(tiny_bert):
    student = build_student(tiny_bert, NARROW, init="width_slice")
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        2,
        16,
        2,
        32,
    )
    assert tiny_bert.config.hidden_size == 32 and tiny_bert.config.num_hidden_layers == 4
    ids = torch.randint(5, 99, (3, 10), generator=torch.Generator().manual_seed(0))
    out = student(input_ids=ids).last_hidden_state
    random = build_student(tiny_bert, NARROW, init="random")(input_ids=ids).last_hidden_state
    assert out.shape == (3, 10, 16) and not torch.allclose(out, random, atol=1e-3)


def _pooled_cosine_in_teacher_space(student, teacher, channels, ids) -> float:
    """Cosine of the student's mean-pooled embedding, placed on the teacher channels it was
    cut from, with the teacher's: how well the init starts before any projection is learned."""
    mask = torch.ones_like(ids)
    with torch.no_grad():
        s = masked_mean_pool(student.eval()(input_ids=ids).last_hidden_state, mask)
        t = masked_mean_pool(teacher(input_ids=ids).last_hidden_state, mask)
    placed = torch.zeros_like(t).index_copy_(1, channels, s)
    return torch.nn.functional.cosine_similarity(placed, t).mean().item()


def test_width_slice_starts_closer_to_the_teacher_than_leading_slices(tiny_bert):
    teacher = _doctored_teacher(tiny_bert)
    ids = torch.randint(5, 99, (8, 12), generator=torch.Generator().manual_seed(0))
    ranked = build_student(teacher, NARROW, init="width_slice")
    leading = build_student(teacher, NARROW, init="uniform_map")
    cos_ranked = _pooled_cosine_in_teacher_space(ranked, teacher, STRONG, ids)
    cos_leading = _pooled_cosine_in_teacher_space(leading, teacher, torch.arange(16), ids)
    assert cos_ranked > 0.95 and cos_ranked > cos_leading + 0.1, (cos_ranked, cos_leading)


@pytest.mark.parametrize(
    ("size", "field"),
    [
        (StudentSize(layers=2, hidden=16, heads=4, ffn=32), "student.heads"),
        (StudentSize(layers=2, hidden=32, heads=4, ffn=128), "student.ffn"),
        (StudentSize(layers=2, hidden=48, heads=6, ffn=64), "student.hidden"),
    ],
)
def test_width_slice_bad_sizes_name_the_field(tiny_bert, size, field):
    with pytest.raises(ValueError, match=field):
        build_student(tiny_bert, size, init="width_slice")


def test_width_slice_refuses_non_bert_names():
    config = DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    teacher = DistilBertModel(config).eval()
    with pytest.raises(ValueError, match="width_slice supports BERT-family.*DistilBertModel"):
        build_student(teacher, NARROW, init="width_slice")


# --- width_slice ranked by activations (student.importance: activations) ------------------


def _ids_batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids (pad 0) and their attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


ROWS = [[2, 17, 40, 41, 3], [2, 9, 3], [2, 60, 61, 62, 63, 64, 3]]


def test_activation_ffn_score_by_hand():
    w = {"output.dense.weight": torch.tensor([[3.0, 0.0], [4.0, 1.0]])}
    assert torch.equal(ffn_scores(w, torch.tensor([2.0, 3.0])), torch.tensor([10.0, 3.0]))


@torch.no_grad()
def test_activation_stats_are_means_over_real_tokens(tiny_bert):
    """The FFN and embedding statistics equal the teacher's own sub-modules run by hand, and
    padding changes nothing (each sentence alone, unpadded, gives the same means)."""
    padded = activation_stats(tiny_bert, [_ids_batch(ROWS)], [1, 3])
    alone = activation_stats(tiny_bert, [_ids_batch([r]) for r in ROWS], [1, 3])
    for a, b in zip(
        (padded.hidden, *padded.heads, *padded.ffn), (alone.hidden, *alone.heads, *alone.ffn)
    ):
        assert torch.allclose(a, b, atol=1e-5)

    ids = torch.cat([torch.tensor(r) for r in ROWS])[None]  # one unpadded "sentence"
    out = tiny_bert(input_ids=ids, output_hidden_states=True)
    block = tiny_bert.encoder.layer[3]
    attention = block.attention(out.hidden_states[3])[0]
    expected_ffn = block.intermediate(attention).abs().mean(dim=(0, 1))
    joined = activation_stats(
        tiny_bert, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], [1, 3]
    )
    assert torch.allclose(joined.ffn[1], expected_ffn, atol=1e-5)
    assert joined.teacher_layers == [1, 3]
    assert joined.heads[0].shape == (4,) and joined.hidden.shape == (32,)


@torch.no_grad()
def test_activations_drop_what_weight_norms_keep(tiny_bert):
    """A head whose values are zeroed writes nothing, and FFN neurons whose pre-activation
    sits far below zero never fire: their output weights (scaled up 10x) still rank them
    first by weights, but they are the first dropped by activations."""
    teacher = copy.deepcopy(tiny_bert)
    for block in teacher.encoder.layer:
        block.attention.self.value.weight[0:8] = 0.0  # head 0
        block.attention.self.value.bias[0:8] = 0.0
        block.attention.output.dense.weight[:, 0:8] *= 10
        block.intermediate.dense.bias[:16] = -30.0  # GELU(-30 + small) is ~0
        block.output.dense.weight[:, :16] *= 10
    size = StudentSize(layers=2, hidden=32, heads=4, ffn=48)
    by_weights = width_slice_plan(teacher, size, [0, 3])
    assert all(torch.equal(f[:16], torch.arange(16)) for f in by_weights.ffn)
    batches = [_ids_batch(ROWS)]
    stats = activation_stats(teacher, batches, [0, 3])
    assert all(h[0] == 0 and (h[1:] > 0).all() for h in stats.heads)
    by_activations = width_slice_plan(teacher, size, [0, 3], stats)
    assert all(not (f < 16).any() for f in by_activations.ffn)

    student = build_student(teacher, size, init="width_slice", calibration=batches)
    kept = by_activations.ffn[1]
    assert torch.equal(
        student.encoder.layer[1].intermediate.dense.weight,
        teacher.encoder.layer[3].intermediate.dense.weight[kept],
    )
    assert all(not p.requires_grad for p in teacher.parameters())  # the teacher is untouched
    assert not teacher.training


def test_activation_stats_must_match_the_copied_layers(tiny_bert):
    stats = activation_stats(tiny_bert, [_ids_batch(ROWS)], [0, 3])
    with pytest.raises(ValueError, match=r"activation stats are of teacher layers \[0, 3\]"):
        width_slice_plan(tiny_bert, NARROW, [1, 2], stats)


def test_calibration_needs_width_slice(tiny_bert):
    with pytest.raises(ValueError, match="student.importance: activations ranks what width_slice"):
        build_student(tiny_bert, NARROW, init="uniform_map", calibration=[_ids_batch(ROWS)])


def test_every_init_builds(tiny_bert):
    for name in STUDENT_INITS:
        student = build_student(tiny_bert, NARROW, init=name)
        assert student.config.hidden_size == 16, name
