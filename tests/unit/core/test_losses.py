"""Pure distillation losses: hand-computed cases, invariants, padding and precision."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.internals import capture_qkv, num_attention_heads
from distill.core.losses import (
    attention_kl,
    hard_label_ce,
    hard_label_mse,
    hidden_cosine,
    hidden_mse,
    logit_kl,
    masked_mean_pool,
    pooled_cosine,
    pooled_mse,
    relation_kl,
    repeat_kv_heads,
    self_attention_relation_kl,
    similarity_mse,
    soft_label_ce,
    value_relation_kl,
)


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# --- hand-computed cases ----------------------------------------------------


def test_masked_mean_pool_by_hand():
    hidden = _t([[[1, 2], [3, 4], [100, -100]], [[5, 6], [7, 8], [9, 10]]])
    mask = _t([[1, 1, 0], [0, 0, 0]])
    pooled = masked_mean_pool(hidden, mask)
    # Row 0: mean of the two real tokens; row 1 has none and pools to zeros.
    torch.testing.assert_close(pooled, _t([[2, 3], [0, 0]]))


def test_hidden_mse_by_hand():
    student = _t([[[1, 2], [3, 4]]])
    teacher = _t([[[0, 0], [3, 0]]])
    # Squared errors 1, 4 | 0, 16: mean over 2 tokens x 2 units = 21 / 4.
    assert hidden_mse(student, teacher, _t([[1, 1]])).item() == pytest.approx(5.25)
    # Only the first token counts: (1 + 4) / 2.
    assert hidden_mse(student, teacher, _t([[1, 0]])).item() == pytest.approx(2.5)


def test_pooled_mse_by_hand():
    assert pooled_mse(_t([[1, 2]]), _t([[3, 0]])).item() == pytest.approx(4.0)


def test_pooled_cosine_by_hand():
    # cos = 0 (orthogonal) and cos = 1 (same direction): mean(1 - cos) = 0.5.
    assert pooled_cosine(_t([[1, 0], [1, 1]]), _t([[0, 1], [2, 2]])).item() == pytest.approx(0.5)
    assert pooled_cosine(_t([[1, 0]]), _t([[1, 1]])).item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_similarity_mse_by_hand():
    # Student: e1, e2, e1 -> cosines (1,2)=0, (1,3)=1, (2,3)=0. Teacher: e1, e1+e2, e2 in 3-d
    # -> cosines 1/sqrt2, 0, 1/sqrt2. Off-diagonal entries (each pair twice):
    # squared differences 1/2, 1, 1/2 -> mean 2/3.
    student = _t([[1, 0], [0, 1], [2, 0]])
    teacher = _t([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    assert similarity_mse(student, teacher).item() == pytest.approx(2 / 3)
    assert similarity_mse(student[:1], teacher[:1]).item() == 0.0  # one row: no pair


def test_similarity_mse_ignores_width_scale_and_rotation():
    """Zero for any student that is the teacher in another orthonormal basis of another
    width, at any per-row scale; positive for an unrelated student; gradients reach it."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 8, generator=g)
    basis, _ = torch.linalg.qr(torch.randn(12, 8, generator=g))  # 12 x 8, orthonormal cols
    scale = torch.rand(6, 1, generator=g) + 0.5
    student = (teacher @ basis.T * scale).requires_grad_(True)
    assert similarity_mse(student, teacher).item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(6, 12, generator=g, requires_grad=True)
    loss = similarity_mse(other, teacher)
    assert loss.item() > 0.01
    loss.backward()
    assert torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0


# --- invariants ---------------------------------------------------------------


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, 8, generator=g)
    teacher = torch.randn(4, 5, 8, generator=g)
    mask = _t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    return student, teacher, mask


def test_identical_inputs_give_zero(batch):
    student, _, mask = batch
    pooled = masked_mean_pool(student, mask)
    assert hidden_mse(student, student.clone(), mask).item() == 0.0
    assert pooled_mse(pooled, pooled.clone()).item() == 0.0
    assert pooled_cosine(pooled, pooled.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_permutation_invariance(batch):
    student, teacher, mask = batch
    perm = torch.tensor([2, 0, 3, 1])
    ps, pt = masked_mean_pool(student, mask), masked_mean_pool(teacher, mask)
    torch.testing.assert_close(masked_mean_pool(student[perm], mask[perm]), ps[perm])
    torch.testing.assert_close(
        hidden_mse(student[perm], teacher[perm], mask[perm]), hidden_mse(student, teacher, mask)
    )
    torch.testing.assert_close(pooled_mse(ps[perm], pt[perm]), pooled_mse(ps, pt))
    torch.testing.assert_close(pooled_cosine(ps[perm], pt[perm]), pooled_cosine(ps, pt))


def test_pooled_cosine_is_scale_invariant(batch):
    student, teacher, mask = batch
    ps, pt = masked_mean_pool(student, mask), masked_mean_pool(teacher, mask)
    torch.testing.assert_close(pooled_cosine(3.7 * ps, 0.2 * pt), pooled_cosine(ps, pt))


# --- padding ---------------------------------------------------------------


def test_padding_values_do_not_matter(batch):
    student, teacher, mask = batch
    pad = mask == 0
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[pad] = 1e3
    noisy_t[pad] = -7.0
    torch.testing.assert_close(masked_mean_pool(noisy_s, mask), masked_mean_pool(student, mask))
    torch.testing.assert_close(
        hidden_mse(noisy_s, noisy_t, mask), hidden_mse(student, teacher, mask)
    )


def test_hidden_mse_gradient_is_zero_on_padding(batch):
    student, teacher, mask = batch
    student = student.clone().requires_grad_(True)
    hidden_mse(student, teacher, mask).backward()
    assert torch.all(student.grad[mask == 0] == 0)
    assert torch.all(student.grad[mask == 1].abs().sum(-1) > 0)


def test_bool_mask_equals_float_mask(batch):
    student, teacher, mask = batch
    torch.testing.assert_close(
        hidden_mse(student, teacher, mask.bool()), hidden_mse(student, teacher, mask)
    )


# --- everything masked / empty ------------------------------------------------


def test_all_masked_hidden_mse_is_zero_with_zero_gradient():
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = hidden_mse(student, torch.randn(2, 3, 4), torch.zeros(2, 3))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_all_masked_pool_is_zero_with_zero_gradient():
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    pooled = masked_mean_pool(hidden, torch.zeros(2, 3))
    assert torch.equal(pooled, torch.zeros(2, 4))
    pooled.sum().backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


@pytest.mark.parametrize("loss", [pooled_mse, pooled_cosine])
def test_empty_batch_pooled_losses_are_zero(loss):
    student = torch.zeros(0, 4, requires_grad=True)
    value = loss(student, torch.zeros(0, 4))
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert student.grad is not None and student.grad.shape == (0, 4)


# --- precision ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(batch, dtype):
    student, teacher, mask = batch
    low_s, low_t = student.to(dtype), teacher.to(dtype)
    up_s, up_t = low_s.float(), low_t.float()  # the same values, widened
    pooled_s, pooled_t = masked_mean_pool(low_s, mask), masked_mean_pool(low_t, mask)
    assert pooled_s.dtype == torch.float32
    torch.testing.assert_close(pooled_s, masked_mean_pool(up_s, mask))

    ps, pt = pooled_s.to(dtype), pooled_t.to(dtype)
    cases = [
        (hidden_mse(low_s, low_t, mask), hidden_mse(up_s, up_t, mask)),
        (pooled_mse(ps, pt), pooled_mse(ps.float(), pt.float())),
        (pooled_cosine(ps, pt), pooled_cosine(ps.float(), pt.float())),
    ]
    for got, want in cases:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)


def test_float16_squares_do_not_overflow():
    # 600**2 = 360000 is past float16's max (65504): only a float32 computation stays finite.
    student = torch.full((1, 2, 2), 300.0, dtype=torch.float16)
    teacher = torch.full((1, 2, 2), -300.0, dtype=torch.float16)
    assert hidden_mse(student, teacher, torch.ones(1, 2)).item() == 360000.0
    assert pooled_mse(student[:, 0], teacher[:, 0]).item() == 360000.0
    # The sum 60000 + 60000 overflows float16; the float32 mean is exact.
    big = torch.full((1, 2, 1), 60000.0, dtype=torch.float16)
    assert masked_mean_pool(big, torch.ones(1, 2)).item() == 60000.0


# =============================================================================================
# Logit, label and token-cosine losses
# =============================================================================================

# p_t = softmax([0, ln 3]) = [1/4, 3/4] against p_s = [1/2, 1/2].
KL_QUARTER_HALF = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)


def test_logit_kl_by_hand():
    student, teacher = _t([[0.0, 0.0]]), _t([[0.0, math.log(3)]])
    assert logit_kl(student, teacher).item() == pytest.approx(KL_QUARTER_HALF)
    # At T = 2 the teacher logits are doubled so the softened p_t is the same; the T² factor
    # makes the loss 4x.
    doubled = _t([[0.0, 2 * math.log(3)]])
    assert logit_kl(student, doubled, temperature=2.0).item() == pytest.approx(4 * KL_QUARTER_HALF)


def test_logit_kl_sequence_mask_by_hand():
    student = _t([[[0.0, 0.0], [5.0, -5.0]]])
    teacher = _t([[[0.0, math.log(3)], [-9.0, 9.0]]])
    # The second token is padding: only the first row counts.
    loss = logit_kl(student, teacher, _t([[1, 0]]))
    assert loss.item() == pytest.approx(KL_QUARTER_HALF)


def test_hard_label_ce_by_hand():
    logits = _t([[0.0, math.log(3)], [7.0, -7.0]])
    labels = torch.tensor([1, -100])
    assert hard_label_ce(logits, labels).item() == pytest.approx(-math.log(0.75))
    assert hard_label_ce(logits, torch.tensor([0, 1]), ignore_index=1).item() == pytest.approx(
        -math.log(0.25)
    )


def test_hard_label_mse_by_hand():
    # [batch, 1] regression-head output against [batch] targets: (1 + 4) / 2.
    assert hard_label_mse(_t([[1.0], [3.0]]), _t([0.0, 1.0])).item() == pytest.approx(2.5)
    assert hard_label_mse(_t([1.0, 3.0]), _t([0.0, 1.0])).item() == pytest.approx(2.5)


def test_soft_label_ce_by_hand():
    logits = _t([[0.0, math.log(3)]])
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_label_ce(logits, _t([[0.5, 0.5]])).item() == pytest.approx(want)
    # A one-hot target is the hard-label cross-entropy.
    torch.testing.assert_close(
        soft_label_ce(logits, _t([[0.0, 1.0]])), hard_label_ce(logits, torch.tensor([1]))
    )


def test_hidden_cosine_by_hand():
    student = _t([[[1, 0], [1, 1], [5, 5]]])
    teacher = _t([[[0, 1], [2, 2], [-5, -5]]])
    # cos = 0 and cos = 1 on the real tokens; the opposite padding token does not count.
    assert hidden_cosine(student, teacher, _t([[1, 1, 0]])).item() == pytest.approx(0.5)


def test_logit_losses_identical_inputs_give_zero(batch):
    student, _, mask = batch
    assert logit_kl(student, student.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_kl(student[:, 0], student[:, 0].clone(), temperature=3.0).item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    assert hidden_cosine(student, student.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([1.5, -2.0, 0.0, 3.0])
    assert hard_label_mse(labels.clone(), labels).item() == 0.0


def test_logit_losses_batch_permutation_invariance(batch):
    student, teacher, mask = batch
    perm = torch.tensor([2, 0, 3, 1])
    labels = torch.tensor([3, 0, 7, 5])
    probs = torch.softmax(teacher[:, 0], dim=-1)
    cases = [
        (lambda s, t, m, y, q: logit_kl(s, t, m, temperature=2.0)),
        (lambda s, t, m, y, q: hidden_cosine(s, t, m)),
        (lambda s, t, m, y, q: hard_label_ce(s[:, 0], y)),
        (lambda s, t, m, y, q: hard_label_mse(s[:, 0, 0], t[:, 0, 0])),
        (lambda s, t, m, y, q: soft_label_ce(s[:, 0], q)),
    ]
    for loss in cases:
        torch.testing.assert_close(
            loss(student[perm], teacher[perm], mask[perm], labels[perm], probs[perm]),
            loss(student, teacher, mask, labels, probs),
        )


def test_logit_losses_ignore_padding_values(batch):
    student, teacher, mask = batch
    pad = mask == 0
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[pad] = 1e3
    noisy_t[pad] = -7.0
    torch.testing.assert_close(logit_kl(noisy_s, noisy_t, mask), logit_kl(student, teacher, mask))
    torch.testing.assert_close(
        hidden_cosine(noisy_s, noisy_t, mask), hidden_cosine(student, teacher, mask)
    )


def test_logit_kl_gradient_is_zero_on_padding(batch):
    student, teacher, mask = batch
    student = student.clone().requires_grad_(True)
    logit_kl(student, teacher, mask).backward()
    assert torch.all(student.grad[mask == 0] == 0)
    assert torch.all(student.grad[mask == 1].abs().sum(-1) > 0)


def test_logit_kl_rejects_bad_temperature_and_shapes():
    with pytest.raises(ValueError, match="temperature"):
        logit_kl(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        logit_kl(torch.zeros(1, 2), torch.zeros(1, 3))


@pytest.mark.parametrize(
    "loss",
    [
        lambda s: logit_kl(s, torch.randn(2, 3, 4), torch.zeros(2, 3)),
        lambda s: hidden_cosine(s, torch.randn(2, 3, 4), torch.zeros(2, 3)),
        lambda s: hard_label_ce(s, torch.full((2, 3), -100)),
    ],
    ids=["logit_kl", "hidden_cosine", "hard_label_ce"],
)
def test_all_masked_logit_losses_are_zero_with_zero_gradient(loss):
    student = torch.randn(2, 3, 4, requires_grad=True)
    value = loss(student)
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize(
    "loss",
    [
        lambda s: logit_kl(s, torch.zeros(0, 4)),
        lambda s: hard_label_mse(s[:, 0], torch.zeros(0)),
        lambda s: soft_label_ce(s, torch.zeros(0, 4)),
    ],
    ids=["logit_kl", "hard_label_mse", "soft_label_ce"],
)
def test_empty_batch_logit_losses_are_zero(loss):
    student = torch.zeros(0, 4, requires_grad=True)
    value = loss(student)
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert student.grad is not None and student.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_logit_losses_compute_in_float32(batch, dtype):
    student, teacher, mask = batch
    low_s, low_t = student.to(dtype), teacher.to(dtype)
    up_s, up_t = low_s.float(), low_t.float()
    labels = torch.tensor([3, 0, 7, 5])
    cases = [
        (
            logit_kl(low_s, low_t, mask, temperature=2.0),
            logit_kl(up_s, up_t, mask, temperature=2.0),
        ),
        (hidden_cosine(low_s, low_t, mask), hidden_cosine(up_s, up_t, mask)),
        (hard_label_ce(low_s[:, 0], labels), hard_label_ce(up_s[:, 0], labels)),
        (
            hard_label_mse(low_s[:, 0, 0], low_t[:, 0, 0]),
            hard_label_mse(up_s[:, 0, 0], up_t[:, 0, 0]),
        ),
        (
            soft_label_ce(low_s[:, 0], torch.softmax(up_t[:, 0], -1)),
            soft_label_ce(up_s[:, 0], torch.softmax(up_t[:, 0], -1)),
        ),
    ]
    for got, want in cases:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)


# =============================================================================================
# Self-attention relations (MiniLM / MiniLMv2)
# =============================================================================================


def test_relation_kl_by_hand():
    # One head of width 1: the student relation is uniform, the teacher's is
    # softmax([0, ln 3]) = [1/4, 3/4] for both queries.
    s = _t([[[0.0], [0.0]]])
    t_a, t_b = _t([[[1.0], [1.0]]]), _t([[[0.0], [math.log(3)]]])
    mask = _t([[1, 1]])
    assert relation_kl(s, s, t_a, t_b, mask, num_heads=1).item() == pytest.approx(KL_QUARTER_HALF)
    # Causal: query 0 sees only key 0 (both relations are [1], KL 0); query 1 as before.
    causal = relation_kl(s, s, t_a, t_b, mask, num_heads=1, causal=True)
    assert causal.item() == pytest.approx(KL_QUARTER_HALF / 2)


def test_relation_kl_averages_heads_and_scales_by_head_width():
    # Two heads of width 1: head 0 as in the hand case, head 1 identical (KL 0): mean k / 2.
    s_a, s_b = _t([[[0.0, 1.0], [0.0, 2.0]]]), _t([[[0.0, 0.5], [0.0, -1.0]]])
    t_a, t_b = _t([[[1.0, 1.0], [1.0, 2.0]]]), _t([[[0.0, 0.5], [math.log(3), -1.0]]])
    mask = _t([[1, 1]])
    got = relation_kl(s_a, s_b, t_a, t_b, mask, num_heads=2)
    assert got.item() == pytest.approx(KL_QUARTER_HALF / 2)
    # One head of width 2: scores are q·k / sqrt(2) = [0, 2 ln 3 / sqrt 2] for the teacher.
    t_a, t_b = _t([[[1.0, 1.0], [1.0, 1.0]]]), _t([[[0.0, 0.0], [math.log(3), math.log(3)]]])
    s = torch.zeros(1, 2, 2)
    p = torch.softmax(_t([0.0, math.sqrt(2) * math.log(3)]), -1)
    want = (p * (p / 0.5).log()).sum().item()
    assert relation_kl(s, s, t_a, t_b, mask, num_heads=1).item() == pytest.approx(want)


def test_relation_kl_is_the_mean_of_its_per_query_rows(qkv):
    (sq, sk, _), (tq, tk, _), mask = qkv
    for causal in (False, True):
        rows = relation_kl(sq, sk, tq, tk, mask, num_heads=2, causal=causal, reduction="none")
        assert rows.shape == mask.shape and torch.all(rows[mask == 0] == 0)
        want = rows.sum() / mask.sum()
        got = relation_kl(sq, sk, tq, tk, mask, num_heads=2, causal=causal)
        torch.testing.assert_close(got, want)


def test_causal_relation_rows_ignore_later_tokens(qkv):
    """Causal: a query's row reads keys at or before it only, so changing the last token's
    vectors changes the last row alone; bidirectional rows all see it."""
    (sq, sk, _), (tq, tk, _), _ = qkv
    mask = torch.ones(4, 5)
    late = [x.clone() for x in (sq, sk, tq, tk)]
    for x in late:
        x[:, -1] = torch.randn(x[:, -1].shape, generator=torch.Generator().manual_seed(5))
    for causal in (True, False):
        before = relation_kl(sq, sk, tq, tk, mask, num_heads=2, causal=causal, reduction="none")
        after = relation_kl(*late, mask, num_heads=2, causal=causal, reduction="none")
        assert torch.equal(before[:, :-1], after[:, :-1]) is causal
        assert not torch.equal(before[:, -1], after[:, -1])


def test_repeat_kv_heads_matches_llamas_repeat_kv():
    from transformers.models.llama.modeling_llama import repeat_kv

    kv = torch.randn(2, 5, 3 * 4)  # 3 key/value heads of 4
    ours = repeat_kv_heads(kv, 6, 3)
    theirs = repeat_kv(kv.view(2, 5, 3, 4).transpose(1, 2), 2)  # [batch, heads, seq, d]
    torch.testing.assert_close(ours, theirs.transpose(1, 2).reshape(2, 5, 24))
    assert repeat_kv_heads(kv, 3, 3) is kv
    with pytest.raises(ValueError, match="num_kv_heads=4 does not divide num_heads=6"):
        repeat_kv_heads(kv, 6, 4)


def test_relation_kl_padding_by_hand():
    # A third, padded token with wild values changes nothing: it is neither key nor query.
    s = _t([[[0.0], [0.0], [40.0]]])
    t_a, t_b = _t([[[1.0], [1.0], [-3.0]]]), _t([[[0.0], [math.log(3)], [50.0]]])
    loss = relation_kl(s, s, t_a, t_b, _t([[1, 1, 0]]), num_heads=1)
    assert loss.item() == pytest.approx(KL_QUARTER_HALF)


@pytest.fixture
def qkv():
    """Student width 8 (padded batch as in `batch`), teacher width 12: [batch, seq, width]."""
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(4, 5, 8, generator=g) for _ in range(3)]
    teacher = [torch.randn(4, 5, 12, generator=g) for _ in range(3)]
    mask = _t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    return student, teacher, mask


RELATION_LOSSES = {
    "relation_kl": lambda s, t, m, c: relation_kl(s[0], s[1], t[0], t[1], m, num_heads=2, causal=c),
    "attention_kl": lambda s, t, m, c: attention_kl(
        s[0], s[1], t[0], t[1], m, num_heads=2, causal=c
    ),
    "value_relation_kl": lambda s, t, m, c: value_relation_kl(s[2], t[2], m, num_heads=4, causal=c),
    "self_attention_relation_kl": lambda s, t, m, c: self_attention_relation_kl(
        s[0], t[0], m, num_relation_heads=4, causal=c
    ),
}
relation_losses = pytest.mark.parametrize("loss", RELATION_LOSSES.values(), ids=RELATION_LOSSES)
causal_or_not = pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])


def test_wrappers_are_relation_kl(qkv):
    (sq, sk, sv), (tq, tk, tv), mask = qkv
    torch.testing.assert_close(
        attention_kl(sq, sk, tq, tk, mask, num_heads=4),
        relation_kl(sq, sk, tq, tk, mask, num_heads=4),
    )
    torch.testing.assert_close(
        value_relation_kl(sv, tv, mask, num_heads=2), relation_kl(sv, sv, tv, tv, mask, num_heads=2)
    )
    torch.testing.assert_close(
        self_attention_relation_kl(sk, tk, mask, num_relation_heads=4, causal=True),
        relation_kl(sk, sk, tk, tk, mask, num_heads=4, causal=True),
    )


@relation_losses
@causal_or_not
def test_relation_student_equals_teacher_gives_zero(qkv, loss, causal):
    student, _, mask = qkv
    assert loss(student, [x.clone() for x in student], mask, causal).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_relation_kl_zero_across_widths_when_relations_match(qkv):
    # Teacher heads twice as wide, each a repeated student head scaled by 2**-0.25: the dot
    # products over sqrt(d_head) are equal, so the relations and KL are too.
    (sq, sk, _), _, mask = qkv

    def widen(x):
        return (x.view(4, 5, 2, 4).repeat_interleave(2, dim=-1) * 2**-0.25).reshape(4, 5, 16)

    loss = relation_kl(sq, sk, widen(sq), widen(sk), mask, num_heads=2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@relation_losses
@causal_or_not
def test_relation_batch_permutation_invariance(qkv, loss, causal):
    student, teacher, mask = qkv
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        loss([x[perm] for x in student], [x[perm] for x in teacher], mask[perm], causal),
        loss(student, teacher, mask, causal),
    )


@relation_losses
@causal_or_not
def test_relation_padding_values_do_not_matter(qkv, loss, causal):
    student, teacher, mask = qkv
    pad = mask == 0
    noisy_s, noisy_t = [x.clone() for x in student], [x.clone() for x in teacher]
    for x in noisy_s:
        x[pad] = 1e3
    for x in noisy_t:
        x[pad] = -7.0
    torch.testing.assert_close(
        loss(noisy_s, noisy_t, mask, causal), loss(student, teacher, mask, causal)
    )


@relation_losses
def test_relation_gradient_is_zero_on_padding(qkv, loss):
    student, teacher, mask = qkv
    student = [x.clone().requires_grad_(True) for x in student]
    loss(student, teacher, mask, False).backward()
    used = [x for x in student if x.grad is not None]
    assert used
    # A lone real token has the relation [1] whatever its value: no gradient there either.
    several = mask * (mask.sum(1, keepdim=True) > 1)
    for x in used:
        assert torch.all(x.grad[mask == 0] == 0)
        assert torch.all(x.grad[several == 1].abs().sum(-1) > 0)


@relation_losses
@causal_or_not
def test_all_masked_relation_is_zero_with_zero_gradient(qkv, loss, causal):
    student, teacher, mask = qkv
    student = [x.clone().requires_grad_(True) for x in student]
    value = loss(student, teacher, torch.zeros_like(mask), causal)
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()
    used = [x for x in student if x.grad is not None]
    assert used
    for x in used:
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_relation_kl_computes_in_float32(qkv, dtype):
    (sq, sk, _), (tq, tk, _), mask = qkv
    low = [x.to(dtype) for x in (sq, sk, tq, tk)]
    got = relation_kl(*low, mask, num_heads=2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, relation_kl(*[x.float() for x in low], mask, num_heads=2))


def test_relation_kl_rejects_bad_heads_shapes_and_reduction(qkv):
    (sq, sk, _), (tq, tk, _), mask = qkv
    with pytest.raises(ValueError, match="num_heads=3"):
        relation_kl(sq, sk, tq, tk, mask, num_heads=3)  # 8 % 3
    with pytest.raises(ValueError, match="num_heads=8"):
        relation_kl(sq, sk, tq, tk, mask, num_heads=8)  # 12 % 8
    with pytest.raises(ValueError, match="share"):
        relation_kl(sq, sk, tq[:, :4], tk[:, :4], mask, num_heads=2)
    with pytest.raises(ValueError, match="reduction: unknown 'sum'"):
        relation_kl(sq, sk, tq, tk, mask, num_heads=2, reduction="sum")


def test_attention_kl_matches_models_own_attention_maps(tiny_bert):
    """attention_kl on hooked q, k equals the KL of the models' `output_attentions` maps."""
    from transformers import BertConfig, BertModel

    teacher = tiny_bert
    with torch.random.fork_rng():
        torch.manual_seed(99)
        student = BertModel(BertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 2}))
    student.eval()
    for model in (teacher, student):
        model.set_attn_implementation("eager")  # sdpa returns no attention maps
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with capture_qkv(teacher, [3]) as t_qkv, capture_qkv(student, [1]) as s_qkv:
        t_maps = teacher(ids, attention_mask=mask, output_attentions=True).attentions[3]
        s_maps = student(ids, attention_mask=mask, output_attentions=True).attentions[1]
    heads = num_attention_heads(teacher)
    got = attention_kl(s_qkv[1][0], s_qkv[1][1], t_qkv[3][0], t_qkv[3][1], mask, num_heads=heads)

    keys = mask.bool()[:, None, None, :]
    terms = torch.where(keys, t_maps * (t_maps.log() - s_maps.log()), torch.zeros_like(t_maps))
    per_query = terms.sum(-1).mean(1)  # [batch, seq]
    want = per_query[mask.bool()].mean()
    assert got.item() > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
