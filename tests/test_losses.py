"""Pure distillation losses: hand-computed cases, invariants, padding and precision."""

from __future__ import annotations

import math

import pytest
import torch

from distill_core.losses import hidden_mse, masked_mean_pool, pooled_cosine, pooled_mse


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
