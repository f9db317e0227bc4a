"""Student construction: layer-init strategies, weight copying, width slicing, freezing."""

from __future__ import annotations

import pytest
import torch

from distill_core.student import (
    StudentSize,
    build_student,
    every_other_layer,
    first_k,
    init_teacher_layers,
    uniform_map,
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
