"""Token-level losses of generative models: language-model cross-entropy and the teacher /
student divergences of word-level knowledge distillation, with a chunked form whose memory
does not grow with batch x sequence x vocabulary.

Every function is pure (tensors in, scalar out), computes its softmaxes in float32, skips
masked tokens and returns 0 when every token is masked. The chunked forms take the final
hidden states and a `head` (hidden -> vocabulary logits) and build logits one chunk of
tokens at a time; with `checkpoint=True` a chunk's student logits are recomputed in the
backward pass instead of being kept, so at most one chunk of `[tokens, vocab]` logits is
alive at once.

Across tokenizers (a student whose vocabulary differs from the teacher's), `uld_distance`
compares the two models' sorted next-token probabilities at target positions aligned by
their order in each tokenization.

References: Hinton et al. 2015 (temperature, T^2 scaling); Kim & Rush 2016 (word-level KD);
Gu et al. 2024, MiniLLM (reverse KL); Agarwal et al. 2024, GKD (generalized JSD(beta));
Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
Distillation Loss" (ULD); Anshumann et al. 2025, "Sparse Logit Sampling" (sampled targets).
"""

from __future__ import annotations

import functools
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
    return _combine(t, s, divergence, beta, _kl) * temperature**2


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _combine(t, s, divergence: str, beta: float, kl) -> torch.Tensor:
    """The named divergence of teacher and student log-probabilities `t`, `s` built from
    `kl(log_p, log_q)`."""
    if divergence == "forward_kl":
        return kl(t, s)
    if divergence == "reverse_kl":
        return kl(s, t)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd_beta: must lie strictly between 0 and 1, got {beta}")
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
    return beta * kl(t, m) + (1.0 - beta) * kl(s, m)


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


def _chunked_mean(
    chunk_sum, tensors: tuple[torch.Tensor, ...], num_chunks: int, checkpoint: bool, n: int
) -> torch.Tensor:
    """`chunk_sum` over aligned row chunks of `tensors` (the first is the student's hidden
    states), summed and divided by `n` rows (0, still attached to the graph, when `n` is 0);
    with `checkpoint` each chunk's activations are recomputed in backward, so one chunk's
    [tokens, vocab] logits are alive at a time."""
    if n == 0:
        return tensors[0].sum() * 0.0
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for chunk in zip(*(_chunks(t, num_chunks) for t in tensors)):
        if checkpoint and torch.is_grad_enabled() and chunk[0].requires_grad:
            total = total + _checkpoint(chunk_sum, *chunk, use_reentrant=False)
        else:
            total = total + chunk_sum(*chunk)
    return total / n


def _live_teacher_sum(
    per_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The `_chunked_mean` chunk sum of a loss between the student and a live teacher:
    each model's logits built from its own hidden rows by its own head, then
    `per_token(student logits, teacher logits)` ([rows]) summed. Shared by every chunked
    loss that reads the teacher's hidden states (`chunked_token_kd`, `chunked_uld`)."""

    def chunk_sum(s_hidden: torch.Tensor, t_hidden: torch.Tensor) -> torch.Tensor:
        # The teacher's logits are rebuilt inside the chunk too: keeping them for the
        # backward pass would hold [tokens, vocab] for the whole batch again.
        with torch.no_grad():
            t_logits = teacher_head(t_hidden)
        return per_token(student_head(s_hidden), t_logits).sum()

    return chunk_sum


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
    per_token = functools.partial(
        token_divergence, divergence=divergence, temperature=temperature, beta=beta
    )
    chunk_sum = _live_teacher_sum(per_token, student_head, teacher_head)
    n = student_hidden.shape[0]
    return _chunked_mean(chunk_sum, (student_hidden, teacher_hidden), num_chunks, checkpoint, n)


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
    n = int((targets != IGNORE_INDEX).sum())

    def chunk_sum(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, ignore_index=IGNORE_INDEX, reduction="sum")

    return _chunked_mean(chunk_sum, (hidden, targets), num_chunks, checkpoint, n)


# --- top-k (sparse) targets: a teacher-output cache keeps k logits per target token ---------


def sparse_token_divergence(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logits: torch.Tensor,
    teacher_lse: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-token divergence against a teacher known only by its top-k logits.

    student_logits: [n, vocab]; topk_ids: [n, k] (int) and topk_logits: [n, k], the
    teacher's k largest raw logits; teacher_lse: [n], logsumexp of the teacher's full
    logits divided by `temperature` (stored by the cache for the job's temperature), so
    p_T(i) = exp(z_i / T - lse) exactly for the kept tokens. Every other token is lumped
    into one residual bucket, p_T(rest) = 1 - sum_k p_T(i), and the student's distribution
    is collapsed the same way (its full softmax summed outside the kept ids): the
    divergence is then the exact divergence between the two (k + 1)-bucket distributions,
    a lower bound of the full one (coarse-graining never increases an f-divergence) that
    equals it when k is the vocabulary size. Returns [n] float32, scaled by T^2 like
    `token_divergence`. (Top-k caches: DistillKit's offline logits, Megatron-LM's KD.)
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: unknown {divergence!r}; choose from {DIVERGENCES}")
    s_all = F.log_softmax(student_logits.float() / temperature, dim=-1)
    s_top = s_all.gather(-1, topk_ids.long())
    t_top = topk_logits.float() / temperature - teacher_lse.float().unsqueeze(-1)
    s = torch.cat([s_top, _log_rest(s_top)], dim=-1)
    t = torch.cat([t_top, _log_rest(t_top)], dim=-1)
    return _combine(t, s, divergence, beta, _xlogy_diff) * temperature**2


def _log_rest(log_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_top))) [n, 1]: the log-probability outside the kept ids. A
    residual below `_REST_FLOOR` is float32 rounding of a sum that is 1 (k = vocabulary, or
    all mass kept) and counts as empty (-inf)."""
    rest = -torch.expm1(torch.logsumexp(log_top, dim=-1, keepdim=True).clamp(max=0.0))
    empty = torch.full_like(rest, -math.inf)
    return torch.where(rest > _REST_FLOOR, torch.log(rest.clamp(min=_REST_FLOOR)), empty)


def _xlogy_diff(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum p (log p - log q) over the last dim, with 0 log 0 = 0 (an empty residual) and
    log q floored at log(1e-30) (a bucket the other model leaves empty), written so that no
    masked inf or nan reaches the gradient."""
    p = log_p.exp()
    safe_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    return (p * (safe_p - log_q.clamp(min=_LOG_FLOOR))).sum(-1)


_REST_FLOOR = 1e-6
_LOG_FLOOR = math.log(1e-30)


def chunked_sparse_token_kd(
    student_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    topk_ids: torch.Tensor,
    topk_logits: torch.Tensor,
    teacher_lse: torch.Tensor,
    *,
    num_chunks: int = 1,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    checkpoint: bool = True,
) -> torch.Tensor:
    """Mean `sparse_token_divergence` over target tokens given as the student's final hidden
    states [tokens, width] and the cached teacher top-k ([tokens, k], [tokens, k],
    [tokens]); the student's logits are built one chunk at a time (see `chunked_token_kd`)."""

    def chunk_sum(h, ids, logits, lse) -> torch.Tensor:
        return sparse_token_divergence(
            student_head(h), ids, logits, lse,
            divergence=divergence, temperature=temperature, beta=beta,
        ).sum()  # fmt: skip

    tensors = (student_hidden, topk_ids, topk_logits, teacher_lse)
    return _chunked_mean(chunk_sum, tensors, num_chunks, checkpoint, student_hidden.shape[0])


def teacher_topk(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a cache keeps of teacher logits [n, vocab]: (top-k ids [n, k] int32, their raw
    logits [n, k] float32, logsumexp(logits / T) [n] float32)."""
    logits = logits.float()
    values, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return ids.to(torch.int32), values, torch.logsumexp(logits / temperature, dim=-1)


# --- sampled targets: a teacher-output cache keeps S draws from the teacher per token -------


def teacher_samples(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws, with replacement, from the teacher's next-token distribution at `temperature`,
    by inverting its CDF at the given uniforms (so the draws depend only on the uniforms
    and the logits, not on the device's random generator).

    logits: [n, vocab]; uniforms: [n, S] in [0, 1). Returns (ids [n, S] int32, the
    teacher's log-probability log p_T(id) of each draw [n, S] float32). A token of
    probability 0 is never drawn. The CDF is summed in float64 ([n, vocab] of it: callers
    pass a few hundred tokens at a time), so rounding moves no measurable mass between
    neighbouring ids.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    cdf = log_p.exp().cumsum(-1, dtype=torch.float64)
    # Scaled by the total so a sum that rounds below 1 still covers every uniform; `right`
    # skips zero-probability ids (their CDF step is empty).
    points = uniforms.to(device=cdf.device, dtype=torch.float64) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, points, right=True).clamp(max=logits.shape[-1] - 1)
    return ids.to(torch.int32), log_p.gather(-1, ids)


def sampled_token_divergence(
    student_logits: torch.Tensor,
    sample_ids: torch.Tensor,
    sample_logp: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token unbiased estimate of the forward KL(p_T || p_S) from S draws of the teacher.

    student_logits: [n, vocab]; sample_ids: [n, S] (int), tokens drawn with replacement from
    the teacher's distribution at `temperature` (`teacher_samples`); sample_logp: [n, S],
    the teacher's log p_T of each draw. Returns [n] float32, scaled by T^2 like
    `token_divergence`: T^2 * mean_s (log p_T(v_s) - log p_S(v_s)), where log p_S uses the
    student's full-vocabulary softmax. Its expectation over the draws is the full
    KL(p_T || p_S), and so is its gradient's: d/dz of -log p_S(v) is (p_S - onehot(v)) / T,
    whose mean under v ~ p_T is (p_S - p_T) / T, the full loss's gradient. Top-k targets
    (`sparse_token_divergence`) drop the tail instead and are biased. (Anshumann et al.,
    ACL 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs": random
    sampling KD with the teacher as proposal, about 12 draws per token.)
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    drawn = log_q.gather(-1, sample_ids.long())
    return (sample_logp.float() - drawn).mean(-1) * temperature**2


def chunked_sampled_token_kd(
    student_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    sample_ids: torch.Tensor,
    sample_logp: torch.Tensor,
    *,
    num_chunks: int = 1,
    temperature: float = 1.0,
    checkpoint: bool = True,
) -> torch.Tensor:
    """Mean `sampled_token_divergence` over target tokens given as the student's final
    hidden states [tokens, width] and the cached teacher draws ([tokens, S], [tokens, S]);
    the student's logits are built one chunk at a time (see `chunked_token_kd`)."""

    def chunk_sum(h, ids, logp) -> torch.Tensor:
        return sampled_token_divergence(student_head(h), ids, logp, temperature=temperature).sum()

    tensors = (student_hidden, sample_ids, sample_logp)
    return _chunked_mean(chunk_sum, tensors, num_chunks, checkpoint, student_hidden.shape[0])


# --- across tokenizers: Universal Logit Distillation (Boizard et al. 2024) ------------------


def first_aligned(
    student_mask: torch.Tensor, teacher_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ULD's alignment of two tokenizations of the same rows: the i-th target position of
    the student's row pairs with the i-th of the teacher's, up to the shorter count.

    student_mask: [batch, Ts], teacher_mask: [batch, Tt] (1/True = a target position).
    Returns both masks (bool, same shapes) cut to the first k_b true positions of each row
    b, k_b = min(student count, teacher count), so `x[student_keep]` and `y[teacher_keep]`
    list the aligned pairs in the same (row-major) order.
    """
    s, t = student_mask.bool(), teacher_mask.bool()
    k = torch.minimum(s.sum(1), t.sum(1)).unsqueeze(1)
    return s & (s.cumsum(1) <= k), t & (t.cumsum(1) <= k)


def uld_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position ULD: the L1 distance between the two models' next-token probabilities,
    each sorted in descending order, the smaller vocabulary padded with zeros.

    student_logits: [..., Vs], teacher_logits: [..., Vt] (the vocabularies may differ);
    returns [...] float32 in [0, 2]. Sorting makes it independent of which token id holds
    which probability (the closed form of the Wasserstein distance between the sorted
    distributions that Boizard et al. use), so it needs no shared vocabulary. No T^2
    factor: it is a distance between probability vectors, not a KL.
    """
    s = F.softmax(student_logits.float() / temperature, dim=-1).sort(dim=-1, descending=True)[0]
    t = F.softmax(teacher_logits.float() / temperature, dim=-1).sort(dim=-1, descending=True)[0]
    m = min(s.shape[-1], t.shape[-1])
    # The zero padding, summed without building it: a padded entry's distance is the other
    # side's probability there.
    return (s[..., :m] - t[..., :m]).abs().sum(-1) + s[..., m:].sum(-1) + t[..., m:].sum(-1)


def uld_distance(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Universal Logit Distillation loss of two tokenizations of the same rows (Boizard et
    al. 2024): mean `uld_divergence` over the target positions `first_aligned` pairs.

    student_logits: [batch, Ts, Vs], teacher_logits: [batch, Tt, Vt], student_mask:
    [batch, Ts], teacher_mask: [batch, Tt] (1 = a target position). Returns a scalar,
    the mean over every aligned position of the batch (0 when none). The reference
    implementation averages per row and then over rows; the two agree when rows align as
    many positions.
    """
    s_keep, t_keep = first_aligned(student_mask, teacher_mask)
    if not s_keep.any():
        return student_logits.sum() * 0.0
    return uld_divergence(
        student_logits[s_keep], teacher_logits[t_keep], temperature=temperature
    ).mean()


def chunked_uld(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_chunks: int = 1,
    temperature: float = 1.0,
    checkpoint: bool = True,
) -> torch.Tensor:
    """`uld_distance` over aligned target positions given as final hidden states, logits
    built per chunk (see `chunked_token_kd`).

    student_hidden: [n, student width], teacher_hidden: [n, teacher width], row i of each
    one aligned pair (`first_aligned`); heads map [m, width] -> [m, own vocabulary].
    """
    per_token = functools.partial(uld_divergence, temperature=temperature)
    chunk_sum = _live_teacher_sum(per_token, student_head, teacher_head)
    n = student_hidden.shape[0]
    return _chunked_mean(chunk_sum, (student_hidden, teacher_hidden), num_chunks, checkpoint, n)
