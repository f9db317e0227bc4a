"""Sampled (importance-sampled) KD targets: draws from the teacher by inverse CDF, and the
forward-KL estimate whose value and gradient are unbiased, unlike top-k targets
(Anshumann et al., ACL 2025, "Sparse Logit Sampling")."""

import math

import pytest
import torch

from distill.core.token_losses import (
    chunked_sampled_token_kd,
    sampled_token_divergence,
    sparse_token_divergence,
    teacher_samples,
    teacher_topk,
    token_divergence,
)

pytestmark = pytest.mark.unit

# The tolerance of the unbiasedness tests: the mean of N independent estimates lies within
# Z standard errors (sample std / sqrt(N)) of its expectation; at Z = 5 a correct estimator
# fails with probability below 1e-6 per compared number (the seeds are fixed, so the test
# is deterministic: this bounds how unlucky the fixed draws may be, not a flake rate).
Z = 5.0


def _case(temperature):
    """Four tokens over a 10-word vocabulary: a teacher whose tail holds real mass (so top-k
    with k = 3 drops some) and an unrelated student."""
    g = torch.Generator().manual_seed(7)
    teacher = 1.5 * torch.randn(4, 10, generator=g)
    student = torch.randn(4, 10, generator=g)
    return student, teacher, temperature


def _estimates(student, teacher, temperature, repeats, samples):
    """`repeats` independent sampled estimates per token [repeats, tokens] and the gradient
    of each repeat's summed loss w.r.t. the student logits [repeats, tokens, vocab]."""
    g = torch.Generator().manual_seed(11)
    n, vocab = teacher.shape
    uniforms = torch.rand(repeats * n, samples, generator=g, dtype=torch.float64)
    ids, logp = teacher_samples(teacher.repeat(repeats, 1), uniforms, temperature)
    logits = student.repeat(repeats, 1).requires_grad_(True)
    per_token = sampled_token_divergence(logits, ids, logp, temperature=temperature)
    per_token.sum().backward()
    return per_token.detach().view(repeats, n), logits.grad.view(repeats, n, vocab)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_loss_and_gradient_are_unbiased_and_topk_is_not(temperature):
    student, teacher, t = _case(temperature)
    full_student = student.clone().requires_grad_(True)
    full = token_divergence(full_student, teacher, temperature=t)
    full.sum().backward()
    values, grads = _estimates(student, teacher, t, repeats=20_000, samples=12)
    n_rep = values.shape[0]

    value_se = values.std(0) / math.sqrt(n_rep)
    assert (value_se < 0.01 * t**2).all()  # tight enough to see a bias of the top-k's size
    assert ((values.mean(0) - full.detach()).abs() <= Z * value_se + 1e-6).all()

    grad_se = grads.std(0) / math.sqrt(n_rep)
    assert ((grads.mean(0) - full_student.grad).abs() <= Z * grad_se + 1e-6).all()

    # Top-k with k = 3 of 10: a lower bound that misses by many standard errors, and a
    # gradient off by many of the sampled gradient's standard errors.
    topk_student = student.clone().requires_grad_(True)
    ids, kept, lse = teacher_topk(teacher, 3, t)
    topk = sparse_token_divergence(topk_student, ids, kept, lse, temperature=t)
    topk.sum().backward()
    assert ((full.detach() - topk.detach()) > 20 * value_se).all()
    grad_bias = (topk_student.grad - full_student.grad).abs()
    assert (grad_bias.amax(-1) > 20 * grad_se.amax(-1)).all()


def test_draws_follow_the_teacher_distribution_and_skip_impossible_tokens():
    logits = torch.tensor([[2.0, 0.0, -math.inf, 1.0, -1.0]])
    p = torch.softmax(logits, -1)[0]
    n = 200_000
    uniforms = torch.rand(1, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ids, logp = teacher_samples(logits, uniforms)
    assert ids.dtype == torch.int32 and logp.dtype == torch.float32
    freq = torch.bincount(ids[0].long(), minlength=5).double() / n
    assert freq[2] == 0  # probability 0: never drawn
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((freq - p.double()).abs() <= Z * se + 1e-12).all()
    torch.testing.assert_close(logp[0], torch.log_softmax(logits, -1)[0][ids[0].long()])
    # The extremes of [0, 1) land on the first and last possible ids.
    edge, _ = teacher_samples(logits, torch.tensor([[0.0, 1.0 - 1e-12]], dtype=torch.float64))
    assert edge.tolist() == [[0, 4]]


def test_temperature_flattens_the_distribution_drawn_from():
    logits = torch.tensor([[3.0, 0.0]])
    uniforms = torch.rand(
        1, 100_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    cold, _ = teacher_samples(logits, uniforms, 1.0)
    warm, logp = teacher_samples(logits, uniforms, 3.0)
    p_warm = torch.softmax(logits / 3.0, -1)[0, 1].item()  # 0.269 vs 0.047 at T = 1
    assert (warm == 1).double().mean().item() == pytest.approx(p_warm, abs=0.005)
    assert (cold == 1).double().mean().item() == pytest.approx(
        torch.softmax(logits, -1)[0, 1].item(), abs=0.005
    )
    assert logp[warm == 1][0].item() == pytest.approx(math.log(p_warm), rel=1e-5)


def test_the_same_uniforms_draw_the_same_ids():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 50, generator=g)
    uniforms = torch.rand(6, 12, generator=g, dtype=torch.float64)
    first, second = teacher_samples(logits, uniforms), teacher_samples(logits, uniforms.clone())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = teacher_samples(logits, torch.rand(6, 12, generator=g, dtype=torch.float64))
    assert not torch.equal(first[0], other[0])


def test_sampled_forward_kl_by_hand():
    # vocab 3, T = 2, draws [0, 0, 2]: T^2 * mean(log p_T(v) - log q_T(v)).
    teacher, student = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    ids = torch.tensor([[0, 0, 2]], dtype=torch.int32)
    lp = [x - math.log(sum(math.exp(y) for y in (1.0, 0.0, 0.5))) for x in (1.0, 0.0, 0.5)]
    lq = [x - math.log(sum(math.exp(y) for y in (0.0, 0.5, 0.0))) for x in (0.0, 0.5, 0.0)]
    expected = 4 * ((lp[0] - lq[0]) * 2 + (lp[2] - lq[2])) / 3
    logp = torch.log_softmax(teacher / 2, -1).gather(-1, ids.long())
    got = sampled_token_divergence(student, ids, logp, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # A student equal to the teacher scores exactly 0 on any draws.
    same = sampled_token_divergence(teacher, ids, logp, temperature=2.0)
    assert same.abs().item() < 1e-6


def test_chunked_equals_unchunked_and_empty_is_zero():
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    teacher = torch.randn(9, 30, generator=g)
    ids, logp = teacher_samples(teacher, torch.rand(9, 12, generator=g, dtype=torch.float64))
    whole = sampled_token_divergence(head(hidden), ids, logp).mean()
    chunked = chunked_sampled_token_kd(hidden, head, ids, logp, num_chunks=4)
    torch.testing.assert_close(chunked, whole)
    chunked.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    empty = chunked_sampled_token_kd(hidden[:0], head, ids[:0], logp[:0])
    assert empty.item() == 0.0 and empty.requires_grad


def test_batch_permutation_permutes_the_per_token_loss():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(7, 20, generator=g), torch.randn(7, 20, generator=g)
    ids, logp = teacher_samples(teacher, torch.rand(7, 5, generator=g, dtype=torch.float64))
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(
        sampled_token_divergence(student[perm], ids[perm], logp[perm]),
        sampled_token_divergence(student, ids, logp)[perm],
    )
