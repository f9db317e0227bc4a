"""Token-level losses of generative models: language-model cross-entropy and the teacher /
student divergences of word-level knowledge distillation, with a chunked form whose memory
does not grow with batch x sequence x vocabulary.

Every function is pure (tensors in, scalar out), computes its softmaxes in float32, skips
masked tokens and returns 0 when every token is masked. The chunked forms take the final
hidden states and a `head` (hidden -> vocabulary logits) and build logits one chunk of
tokens at a time; with `checkpoint=True` a chunk's student logits are recomputed in the
backward pass instead of being kept, so at most one chunk of `[tokens, vocab]` logits is
alive at once.

References: Hinton et al. 2015 (temperature, T^2 scaling); Kim & Rush 2016 (word-level KD);
Gu et al. 2024, MiniLLM (reverse KL); Agarwal et al. 2024, GKD (generalized JSD(beta)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-token divergence between teacher and student next-token distributions.

    student_logits, teacher_logits: [..., vocab]; returns [...] float32, already scaled by
    T^2 (so gradients keep their size across temperatures).
    - forward_kl: KL(p_T || p_S), mode-covering (Hinton; Kim & Rush word-level KD);
    - reverse_kl: KL(p_S || p_T), mode-seeking (MiniLLM);
    - jsd: beta KL(p_T || m) + (1 - beta) KL(p_S || m), m = beta p_T + (1 - beta) p_S
      (GKD's generalized JSD; beta = 0.5 is the symmetric JSD, bounded by log 2).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: unknown {divergence!r}; choose from {DIVERGENCES}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward_kl":
        per_token = (t.exp() * (t - s)).sum(-1)
    elif divergence == "reverse_kl":
        per_token = (s.exp() * (s - t)).sum(-1)
    else:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd_beta: must lie strictly between 0 and 1, got {beta}")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
        per_token = beta * (t.exp() * (t - m)).sum(-1) + (1.0 - beta) * (s.exp() * (s - m)).sum(-1)
    return per_token * temperature**2


def token_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Mean `token_divergence` over the tokens where `mask` is true.

    student_logits, teacher_logits: [batch, seq, vocab]; mask: [batch, seq] (1/True = a
    target token, 0 = padding or ignore_index). Returns a scalar (0 when all are masked).
    """
    keep = mask.bool()
    if not keep.any():
        return student_logits.sum() * 0.0
    per_token = token_divergence(
        student_logits[keep],
        teacher_logits[keep],
        divergence=divergence,
        temperature=temperature,
        beta=beta,
    )
    return per_token.mean()


def lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [..., vocab] against target ids [...], skipping
    `IGNORE_INDEX`; 0 when every target is ignored."""
    keep = targets != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), targets[keep])


def _chunks(x: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, ...]:
    # tensor_split always returns num_chunks pieces (some may be empty): under ZeRO-3 every
    # head call is a collective, so every rank must make the same number of calls.
    return torch.tensor_split(x, num_chunks, dim=0)


def chunked_token_kd(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_chunks: int = 1,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    checkpoint: bool = True,
) -> torch.Tensor:
    """`token_kd` over target tokens given as final hidden states, logits built per chunk.

    student_hidden: [tokens, student width], teacher_hidden: [tokens, teacher width], the
    rows of the target tokens only (padding and ignore_index already dropped); heads map
    [n, width] -> [n, vocab] logits. Equal to `token_kd` on the full logits.
    """
    n = student_hidden.shape[0]
    if n == 0:
        return student_hidden.sum() * 0.0

    def chunk_sum(s_hidden: torch.Tensor, t_hidden: torch.Tensor) -> torch.Tensor:
        # The teacher's logits are rebuilt inside the chunk too: keeping them for the
        # backward pass would hold [tokens, vocab] for the whole batch again.
        with torch.no_grad():
            t_logits = teacher_head(t_hidden)
        return token_divergence(
            student_head(s_hidden),
            t_logits,
            divergence=divergence,
            temperature=temperature,
            beta=beta,
        ).sum()

    total = student_hidden.new_zeros((), dtype=torch.float32)
    pieces = zip(_chunks(student_hidden, num_chunks), _chunks(teacher_hidden, num_chunks))
    for s_chunk, t_chunk in pieces:
        if checkpoint and torch.is_grad_enabled() and s_chunk.requires_grad:
            total = total + _checkpoint(chunk_sum, s_chunk, t_chunk, use_reentrant=False)
        else:
            total = total + chunk_sum(s_chunk, t_chunk)
    return total / n


def chunked_lm_cross_entropy(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    num_chunks: int = 1,
    checkpoint: bool = True,
) -> torch.Tensor:
    """`lm_cross_entropy` from hidden states [tokens, width] and targets [tokens], logits
    built per chunk (targets may hold `IGNORE_INDEX`)."""
    keep = targets != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0

    def chunk_sum(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, ignore_index=IGNORE_INDEX, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(_chunks(hidden, num_chunks), _chunks(targets, num_chunks)):
        if checkpoint and torch.is_grad_enabled() and h.requires_grad:
            total = total + _checkpoint(chunk_sum, h, y, use_reentrant=False)
        else:
            total = total + chunk_sum(h, y)
    return total / n
