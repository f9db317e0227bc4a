"""MixKD mixing: embeddings, masks and labels by hand; Beta sampling reproducibility."""

from __future__ import annotations

import pytest
import torch

from distill.core.losses import soft_label_ce
from distill.core.mixup import mix_labels, mixup, sample_lambda


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_mixup_by_hand():
    embeds = _t([[[1.0, 0.0], [2.0, 2.0]], [[0.0, 4.0], [8.0, 0.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    perm = torch.tensor([1, 0])
    mixed, mixed_mask = mixup(embeds, mask, perm, 0.75)
    want = _t([[[0.75, 1.0], [3.5, 1.5]], [[0.25, 3.0], [6.5, 0.5]]])
    torch.testing.assert_close(mixed, want)
    # Token 1 is real in example 0, so it is real in both mixes (union of real tokens).
    assert torch.equal(mixed_mask, torch.tensor([[1, 1], [1, 1]]))
    _, bool_mask = mixup(embeds, mask.bool(), perm, 0.75)
    assert bool_mask.dtype == torch.bool and bool_mask.all()


def test_mixup_identity_and_lambda_one():
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(3, 4, 5, generator=g), torch.ones(3, 4)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(mixup(embeds, mask, torch.arange(3), 0.3)[0], embeds)
    torch.testing.assert_close(mixup(embeds, mask, perm, 1.0)[0], embeds)
    torch.testing.assert_close(mixup(embeds, mask, perm, 0.0)[0], embeds[perm])


def test_mixup_gradient_reaches_both_examples():
    embeds = torch.randn(2, 3, 4, requires_grad=True)
    mixed, _ = mixup(embeds, torch.ones(2, 3), torch.tensor([1, 0]), 0.25)
    mixed[0].sum().backward()
    torch.testing.assert_close(embeds.grad[0], torch.full((3, 4), 0.25))
    torch.testing.assert_close(embeds.grad[1], torch.full((3, 4), 0.75))


def test_mix_labels_classification_by_hand():
    targets = mix_labels(torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0]), 0.75, num_classes=3)
    want = _t([[0.75, 0.0, 0.25], [0.0, 0.25, 0.75], [0.25, 0.75, 0.0]])
    torch.testing.assert_close(targets, want)
    torch.testing.assert_close(targets.sum(-1), torch.ones(3))
    # Same label on both sides: the target stays one-hot.
    same = mix_labels(torch.tensor([1, 1]), torch.tensor([1, 0]), 0.3, num_classes=2)
    torch.testing.assert_close(same, _t([[0.0, 1.0], [0.0, 1.0]]))
    assert soft_label_ce(torch.zeros(3, 3), targets).item() == pytest.approx(
        torch.log(torch.tensor(3.0)).item()
    )


def test_mix_labels_regression_by_hand():
    mixed = mix_labels(_t([1.0, 5.0]), torch.tensor([1, 0]), 0.25, num_classes=None)
    torch.testing.assert_close(mixed, _t([4.0, 2.0]))


def test_mix_labels_rejects_float_labels_for_classes():
    with pytest.raises(ValueError, match="num_classes=3"):
        mix_labels(_t([0.0, 1.0]), torch.tensor([1, 0]), 0.5, num_classes=3)


def test_sample_lambda_is_reproducible_and_in_range():
    state = torch.get_rng_state()
    a = [sample_lambda(0.4, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert a[0] == a[1]
    g = torch.Generator().manual_seed(7)
    draws = torch.tensor([sample_lambda(0.4, g) for _ in range(200)])
    assert torch.all((draws >= 0) & (draws <= 1))
    assert draws.unique().numel() > 150
    # Beta(a, a) is symmetric about 1/2; alpha < 1 piles mass near 0 and 1.
    assert abs(draws.mean().item() - 0.5) < 0.1
    assert ((draws < 0.1) | (draws > 0.9)).float().mean() > 0.3
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


def test_sample_lambda_rejects_non_positive_alpha():
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(0.0, torch.Generator())
