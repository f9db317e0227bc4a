"""Token-level losses of generative distillation: hand-computed values, invariants
(KL(p, p) = 0, batch permutation), masking / ignore_index, temperature, and the chunked
forms equal to the unchunked ones (values and gradients). Universal Logit Distillation
(across vocabularies): by hand, invariant to either vocabulary's order and to zero padding,
aligned by the order of unmasked positions, gradients to the student only."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.token_losses import (
    IGNORE_INDEX,
    chunked_lm_cross_entropy,
    chunked_token_kd,
    chunked_uld,
    first_aligned,
    lm_cross_entropy,
    token_divergence,
    token_kd,
    uld_distance,
    uld_divergence,
)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_forward_and_reverse_kl_by_hand():
    # Teacher p = (1/2, 1/2), student q = (3/4, 1/4) over a 2-token vocabulary.
    student = torch.log(_t([[0.75, 0.25]]))
    teacher = torch.log(_t([[0.5, 0.5]]))
    fwd = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    rev = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert token_divergence(student, teacher).item() == pytest.approx(fwd, abs=1e-6)
    got = token_divergence(student, teacher, divergence="reverse_kl").item()
    assert got == pytest.approx(rev, abs=1e-6)


def test_jsd_by_hand_and_its_bound():
    p, q, beta = [0.5, 0.5], [0.75, 0.25], 0.3
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    expected = beta * sum(a * math.log(a / c) for a, c in zip(p, m)) + (1 - beta) * sum(
        b * math.log(b / c) for b, c in zip(q, m)
    )
    got = token_divergence(torch.log(_t([q])), torch.log(_t([p])), divergence="jsd", beta=beta)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # Disjoint distributions: the symmetric JSD reaches log 2, KL would be unbounded.
    far = token_divergence(_t([[30.0, -30.0]]), _t([[-30.0, 30.0]]), divergence="jsd")
    assert far.item() == pytest.approx(math.log(2), abs=1e-4)


def test_temperature_softens_and_scales_by_t_squared():
    student, teacher = _t([[2.0, 0.0, -1.0]]), _t([[0.0, 1.0, 0.5]])
    t = 3.0
    expected = t**2 * token_divergence(student / t, teacher / t).item()
    assert token_divergence(student, teacher, temperature=t).item() == pytest.approx(expected)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=g)
    teacher = torch.randn(3, 5, 11, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    return student, teacher, mask


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_identical_distributions_give_zero(logits, divergence):
    student, _, mask = logits
    assert token_kd(student, student.clone(), mask, divergence=divergence).item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_masked_tokens_do_not_count(logits, divergence):
    student, teacher, mask = logits
    base = token_kd(student, teacher, mask, divergence=divergence)
    noisy = teacher.clone()
    noisy[mask == 0] = 1e4 * torch.randn_like(noisy[mask == 0])  # garbage under the mask
    assert token_kd(student, noisy, mask, divergence=divergence).item() == pytest.approx(
        base.item()
    )
    # Equal to the mean over the 7 real tokens computed one by one.
    per = [
        token_divergence(student[b, s], teacher[b, s], divergence=divergence)
        for b, s in mask.nonzero().tolist()
    ]
    assert base.item() == pytest.approx(torch.stack(per).mean().item(), abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_batch_permutation_invariant(logits, divergence):
    student, teacher, mask = logits
    perm = torch.tensor([2, 0, 1])
    a = token_kd(student, teacher, mask, divergence=divergence)
    b = token_kd(student[perm], teacher[perm], mask[perm], divergence=divergence)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_all_masked_is_zero_with_a_gradient(logits):
    student, teacher, _ = logits
    student.requires_grad_(True)
    loss = token_kd(student, teacher, torch.zeros(3, 5))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.abs().sum() == 0


def test_lm_cross_entropy_by_hand_and_ignore_index():
    logits = torch.log(_t([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    targets = torch.tensor([[0, IGNORE_INDEX]])
    assert lm_cross_entropy(logits, targets).item() == pytest.approx(-math.log(0.5), abs=1e-6)
    targets = torch.tensor([[1, 2]])
    expected = -(math.log(0.25) + math.log(0.8)) / 2
    assert lm_cross_entropy(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    assert lm_cross_entropy(logits, torch.full((1, 2), IGNORE_INDEX)).item() == 0.0


def _heads(vocab=13, s_width=6, t_width=8):
    g = torch.Generator().manual_seed(1)
    s_head = torch.nn.Linear(s_width, vocab)
    t_head = torch.nn.Linear(t_width, vocab).requires_grad_(False)
    with torch.no_grad():
        for p in (*s_head.parameters(), *t_head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    return s_head, t_head


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("num_chunks", [1, 3, 7, 40])
def test_chunked_kd_equals_unchunked_values_and_gradients(divergence, num_chunks):
    s_head, t_head = _heads()
    g = torch.Generator().manual_seed(2)
    s_hidden = torch.randn(17, 6, generator=g, requires_grad=True)
    t_hidden = torch.randn(17, 8, generator=g)
    full = token_kd(
        s_head(s_hidden)[None],
        t_head(t_hidden)[None],
        torch.ones(1, 17),
        divergence=divergence,
        temperature=2.0,
        beta=0.3,
    )
    full_grad = torch.autograd.grad(full, [s_hidden, s_head.weight])
    chunked = chunked_token_kd(
        s_hidden,
        t_hidden,
        s_head,
        t_head,
        num_chunks=num_chunks,
        divergence=divergence,
        temperature=2.0,
        beta=0.3,
    )
    chunk_grad = torch.autograd.grad(chunked, [s_hidden, s_head.weight])
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(chunk_grad, full_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_chunks", [1, 4, 30])
def test_chunked_cross_entropy_equals_unchunked(num_chunks):
    s_head, _ = _heads()
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(20, 6, generator=g, requires_grad=True)
    targets = torch.randint(13, (20,), generator=g)
    targets[::3] = IGNORE_INDEX
    full = lm_cross_entropy(s_head(hidden), targets)
    chunked = chunked_lm_cross_entropy(hidden, s_head, targets, num_chunks=num_chunks)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(
        torch.autograd.grad(chunked, hidden)[0],
        torch.autograd.grad(full, hidden)[0],
        atol=1e-6,
        rtol=1e-4,
    )


def test_chunks_bound_the_logits_alive_at_once():
    """With checkpointing, backward memory holds one chunk of [tokens, vocab] logits, not all:
    the saved tensors of the graph are the hidden rows, never full-vocabulary logits."""
    vocab, n = 5000, 64
    s_head, t_head = _heads(vocab=vocab)
    s_hidden = torch.randn(n, 6, requires_grad=True)
    t_hidden = torch.randn(n, 8)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = chunked_token_kd(s_hidden, t_hidden, s_head, t_head, num_chunks=8)
    # Unchunked, or chunked without checkpointing, keeps >= [64, 5000] floats for backward;
    # checkpointed chunks keep only hidden rows and the small per-chunk results.
    assert sum(saved) < n * vocab / 10
    loss.backward()
    assert s_hidden.grad is not None


def test_bad_divergence_and_beta_fail_naming_them():
    with pytest.raises(ValueError, match="divergence"):
        token_divergence(_t([[0.0, 1.0]]), _t([[0.0, 1.0]]), divergence="tv")
    with pytest.raises(ValueError, match="jsd_beta"):
        token_divergence(_t([[0.0, 1.0]]), _t([[0.0, 1.0]]), divergence="jsd", beta=1.0)


# --- Universal Logit Distillation (across vocabularies) -------------------------------------


def test_uld_by_hand():
    # Student p = (0.2, 0.5, 0.3) over 3 tokens, teacher q = (0.4, 0.6) over 2: sorted,
    # (0.5, 0.3, 0.2) vs (0.6, 0.4, 0): |0.1| + |0.1| + |0.2| = 0.4.
    student = torch.log(_t([[[0.2, 0.5, 0.3]]]))
    teacher = torch.log(_t([[[0.4, 0.6]]]))
    ones = torch.ones(1, 1)
    assert uld_distance(student, teacher, ones, ones).item() == pytest.approx(0.4, abs=1e-6)
    # Temperature 2 softens both sides before sorting: logits (2, 0) -> softmax((1, 0)).
    s, t = _t([[2.0, 0.0]]), _t([[0.0, 0.0, 0.0]])
    p = 1 / (1 + math.exp(-1.0))
    expected = abs(p - 1 / 3) + abs(1 - p - 1 / 3) + 1 / 3
    assert uld_divergence(s, t, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)
    # Two positions: the loss is their mean.
    student = torch.log(_t([[[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]]))
    teacher = torch.log(_t([[[0.4, 0.6], [0.5, 0.5]]]))
    ones = torch.ones(1, 2)
    expected = (0.4 + (1 / 6 + 1 / 6 + 1 / 3)) / 2
    assert uld_distance(student, teacher, ones, ones).item() == pytest.approx(expected, abs=1e-6)


@pytest.fixture
def two_vocabularies():
    """Student logits over 11 tokens, teacher logits over 7, different lengths and padding."""
    g = torch.Generator().manual_seed(4)
    student = torch.randn(3, 6, 11, generator=g)
    teacher = torch.randn(3, 5, 7, generator=g)
    s_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    t_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left-padded row
    return student, teacher, s_mask, t_mask


def test_uld_of_one_distribution_in_any_vocabulary_order_is_zero(two_vocabularies):
    student, _, s_mask, _ = two_vocabularies
    assert uld_distance(student, student.clone(), s_mask, s_mask).item() == pytest.approx(
        0.0, abs=1e-6
    )
    shuffled = student[..., torch.randperm(11, generator=torch.Generator().manual_seed(5))]
    assert uld_distance(student, shuffled, s_mask, s_mask).item() == pytest.approx(0.0, abs=1e-6)


def test_uld_is_invariant_to_either_vocabularys_order(two_vocabularies):
    student, teacher, s_mask, t_mask = two_vocabularies
    g = torch.Generator().manual_seed(6)
    base = uld_distance(student, teacher, s_mask, t_mask)
    s_perm = student[..., torch.randperm(11, generator=g)]
    t_perm = teacher[..., torch.randperm(7, generator=g)]
    for s, t in ((s_perm, teacher), (student, t_perm), (s_perm, t_perm)):
        assert uld_distance(s, t, s_mask, t_mask).item() == pytest.approx(base.item(), abs=1e-6)


def test_uld_is_symmetric_and_zero_padding_changes_nothing(two_vocabularies):
    student, teacher, s_mask, t_mask = two_vocabularies
    base = uld_distance(student, teacher, s_mask, t_mask)
    swapped = uld_distance(teacher, student, t_mask, s_mask)
    assert swapped.item() == pytest.approx(base.item(), abs=1e-6)
    # Padding the smaller vocabulary with zero-probability tokens (-inf logits) up to the
    # larger one, as ULD does implicitly, leaves the distance unchanged.
    padded = torch.cat([teacher, torch.full((3, 5, 4), -math.inf)], dim=-1)
    assert uld_distance(student, padded, s_mask, t_mask).item() == pytest.approx(
        base.item(), abs=1e-6
    )
    assert 0.0 < base.item() <= 2.0


def test_uld_aligns_the_ith_unmasked_positions_and_ignores_masked_ones(two_vocabularies):
    student, teacher, s_mask, t_mask = two_vocabularies
    s_keep, t_keep = first_aligned(s_mask, t_mask)
    # Row 0: 4 vs 5 targets -> 4 pairs; row 1: 6 vs 3 (left-padded) -> 3; row 2: 0 vs 3 -> 0.
    assert s_keep.sum(1).tolist() == t_keep.sum(1).tolist() == [4, 3, 0]
    assert t_keep[1].tolist() == [False, False, True, True, True]
    pairs = [((0, i), (0, i)) for i in range(4)] + [((1, i), (1, i + 2)) for i in range(3)]
    by_hand = torch.stack([uld_divergence(student[s], teacher[t]) for s, t in pairs]).mean()
    base = uld_distance(student, teacher, s_mask, t_mask)
    assert base.item() == pytest.approx(by_hand.item(), abs=1e-6)
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[~s_keep] = 1e4 * torch.randn_like(noisy_s[~s_keep])  # garbage where nothing pairs
    noisy_t[~t_keep] = 1e4 * torch.randn_like(noisy_t[~t_keep])
    assert uld_distance(noisy_s, noisy_t, s_mask, t_mask).item() == pytest.approx(
        base.item(), abs=1e-6
    )


def test_uld_all_masked_is_zero_with_a_gradient(two_vocabularies):
    student, teacher, s_mask, _ = two_vocabularies
    student.requires_grad_(True)
    loss = uld_distance(student, teacher, s_mask, torch.zeros(3, 5))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.abs().sum() == 0


@pytest.mark.parametrize("num_chunks", [1, 3, 40])
def test_chunked_uld_equals_unchunked_and_trains_the_student_only(num_chunks):
    s_head, _ = _heads(vocab=13)
    _, t_head = _heads(vocab=9)
    g = torch.Generator().manual_seed(7)
    s_hidden = torch.randn(17, 6, generator=g, requires_grad=True)
    t_hidden = torch.randn(17, 8, generator=g, requires_grad=True)  # must get no gradient
    ones = torch.ones(1, 17)
    full = uld_distance(s_head(s_hidden)[None], t_head(t_hidden).detach()[None], ones, ones)
    full_grad = torch.autograd.grad(full, [s_hidden, s_head.weight])
    chunked = chunked_uld(
        s_hidden, t_hidden, s_head, t_head, num_chunks=num_chunks, temperature=1.0
    )
    chunked.backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip((s_hidden.grad, s_head.weight.grad), full_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert s_hidden.grad.abs().sum() > 0
    assert t_hidden.grad is None and t_head.weight.grad is None
