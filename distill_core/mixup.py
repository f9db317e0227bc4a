"""MixKD data augmentation: interpolate the token embeddings and labels of example pairs.

MixKD (Liang et al., 2021, "MixKD: Towards Efficient Distillation of Large-scale Language
Models") feeds teacher and student the same mixed embeddings lam * e_i + (1 - lam) * e_j,
with lam ~ Beta(alpha, alpha) and j = perm[i]. This is input preparation, not a loss: the
student's output on the mixed batch is scored by `losses.logit_kl` against the teacher and by
`losses.soft_label_ce` (or `hard_label_mse`) against `mix_labels`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Beta


def sample_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """One mixing weight lam ~ Beta(alpha, alpha), reproducible from `generator`.

    torch.distributions cannot take a generator, so the draw runs under a forked global RNG
    seeded from `generator`; the caller's global RNG state is left untouched.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample())


def mixup(
    embeds: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example's token embeddings with those of example perm[i].

    embeds: [batch, seq, hidden]; mask: [batch, seq] (1 for real tokens); perm: [batch]
    indices. Returns (lam * embeds + (1 - lam) * embeds[perm], mask | mask[perm]): a token is
    real in the mix when it is real in either example. The mask keeps its dtype.
    """
    mixed = lam * embeds + (1 - lam) * embeds[perm]
    return mixed, torch.maximum(mask, mask[perm])


def mix_labels(
    labels: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor, num_classes: int | None
) -> torch.Tensor:
    """Labels for a `mixup` batch.

    Classification (`num_classes` an int, labels [batch] integer): soft targets
    lam * onehot(y) + (1 - lam) * onehot(y[perm]), [batch, num_classes] float32, for
    `losses.soft_label_ce`. Regression (`num_classes=None`, labels [batch] float):
    lam * y + (1 - lam) * y[perm] in float32, for `losses.hard_label_mse`.
    """
    if num_classes is None:
        y = labels.to(torch.float32)
        return lam * y + (1 - lam) * y[perm]
    if labels.is_floating_point():
        raise ValueError(
            f"num_classes={num_classes} needs integer class labels, got {labels.dtype}; "
            "pass num_classes=None for regression targets"
        )
    onehot = F.one_hot(labels.long(), num_classes).to(torch.float32)
    return lam * onehot + (1 - lam) * onehot[perm]
