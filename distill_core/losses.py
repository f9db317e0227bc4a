"""Distillation losses as pure functions of tensors.

Every loss computes in float32, honours the padding mask where it has one and returns 0
when everything is masked. Mixing losses is the objective's job (`objective.py`), never a
loss's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over real tokens (sentence-transformers mean pooling).

    hidden: [batch, seq, hidden]; mask: [batch, seq] with 1 for real tokens.
    Returns [batch, hidden] in float32; a row with no real token pools to zeros.
    """
    m = mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * m).sum(dim=1)
    return summed / m.sum(dim=1).clamp(min=1.0)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (already projected) student and teacher token states.

    TinyBERT (Jiao et al., 2020) hidden-state loss / ERNIE-Tiny "latent" loss.
    student, teacher: [batch, seq, hidden]; mask: [batch, seq]. The mean is over real
    tokens and hidden units; padding positions contribute nothing.
    """
    m = mask.to(torch.float32).unsqueeze(-1)
    sq = (student.to(torch.float32) - teacher.to(torch.float32)).pow(2) * m
    denom = m.sum() * student.shape[-1]
    if denom == 0:
        return sq.sum() * 0.0
    return sq.sum() / denom


def pooled_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sentence embeddings, [batch, hidden] each.

    Sentence-representation approximation (Sun et al., 2019, "BERT to LSTM"; Reimers &
    Gurevych, 2020, multilingual distillation).
    """
    if student.numel() == 0:
        return student.sum() * 0.0
    return F.mse_loss(student.to(torch.float32), teacher.to(torch.float32))


def pooled_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the batch; [batch, hidden] each.

    The DistilBERT (Sanh et al., 2019) cosine loss applied to sentence embeddings.
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    cos = F.cosine_similarity(student.to(torch.float32), teacher.to(torch.float32), dim=-1)
    return (1.0 - cos).mean()
