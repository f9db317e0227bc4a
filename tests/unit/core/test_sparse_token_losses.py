"""Top-k (sparse) KD losses against hand-computed values and the full-vocabulary losses."""

import math

import pytest
import torch

from distill.core.token_losses import (
    DIVERGENCES,
    chunked_sparse_token_kd,
    sparse_token_divergence,
    teacher_topk,
    token_divergence,
)

pytestmark = pytest.mark.unit


def _sparse(student, teacher, k, **kw):
    ids, values, lse = teacher_topk(teacher, k, kw.get("temperature", 1.0))
    return sparse_token_divergence(student, ids, values, lse, **kw)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_k_equal_to_vocab_is_the_full_loss(divergence, temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 11, generator=g), 3 * torch.randn(6, 11, generator=g)
    full = token_divergence(student, teacher, divergence=divergence, temperature=temperature)
    sparse = _sparse(student, teacher, 11, divergence=divergence, temperature=temperature)
    torch.testing.assert_close(sparse, full, atol=1e-5, rtol=1e-5)


def test_forward_kl_by_hand_with_the_residual_bucket():
    # vocab 3, k = 1: teacher p = softmax([2, 0, 0]), student q = softmax([0, 1, 0]).
    teacher, student = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    zt, zs = math.exp(2) + 2, 1 + math.e + 1
    p0, q0 = math.exp(2) / zt, 1 / zs
    expected = p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))
    got = _sparse(student, teacher, 1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_temperature_applies_to_the_teacher_normaliser():
    # T = 2 with k = 1: p0 = exp(z0/2) / sum exp(z/2); the T^2 factor scales the result.
    teacher, student = torch.tensor([[4.0, 0.0, 2.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    t = [4 / 2, 0.0, 1.0]
    p0 = math.exp(t[0]) / sum(math.exp(x) for x in t)
    q0 = 1 / 3
    expected = 4 * (p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0)))
    got = _sparse(student, teacher, 1, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_identical_models_give_zero_and_topk_lower_bounds_the_full(divergence):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 40, generator=g)
    assert _sparse(logits, logits, 4, divergence=divergence).abs().max() < 1e-6
    student = torch.randn(5, 40, generator=g)
    full = token_divergence(student, logits, divergence=divergence)
    for k in (1, 8, 39):
        assert (
            _sparse(student, logits, k, divergence=divergence) <= full + 1e-4
        ).all()  # fp32 rounding of 1 - sum


def test_gradients_are_finite_when_the_kept_ids_hold_all_teacher_mass():
    teacher = torch.tensor([[50.0, -50.0, -50.0, -50.0]])  # p(rest) underflows to 0
    student = torch.zeros(1, 4, requires_grad=True)
    loss = _sparse(student, teacher, 1).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_chunked_equals_unchunked_and_empty_is_zero():
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    teacher = torch.randn(9, 30, generator=g)
    ids, values, lse = teacher_topk(teacher, 5)
    whole = sparse_token_divergence(head(hidden), ids, values, lse).mean()
    chunked = chunked_sparse_token_kd(hidden, head, ids, values, lse, num_chunks=4)
    torch.testing.assert_close(chunked, whole)
    chunked.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    empty = chunked_sparse_token_kd(hidden[:0], head, ids[:0], values[:0], lse[:0])
    assert empty.item() == 0.0


def test_batch_permutation_permutes_the_per_token_loss():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(7, 20, generator=g), torch.randn(7, 20, generator=g)
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(
        _sparse(student[perm], teacher[perm], 3), _sparse(student, teacher, 3)[perm]
    )
