"""Distillation losses as pure functions of tensors.

Every loss computes in float32, honours the padding mask where it has one and returns 0
when everything is masked. Mixing losses is the objective's job (`objective.py`), never a
loss's.
"""

from __future__ import annotations

import math

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


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the in-batch cosine-similarity matrices of student and
    teacher sentence embeddings, [batch, width] each (the widths may differ): the student
    keeps the teacher's geometry, which sentences are close to which, in its own space and
    without a projection. Similarity-preserving KD (Tung & Mori, 2019) on L2-normalised
    sentence embeddings; off-diagonal entries only (the diagonal is 1 for both)."""
    if student.shape[0] < 2:
        return student.sum() * 0.0
    return F.mse_loss(pairwise_cosines(student), pairwise_cosines(teacher))


def pairwise_cosines(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal cosine similarities of the rows of `x` [n, width], float32, in
    row-major order ([n * (n - 1)])."""
    x = F.normalize(x.to(torch.float32), dim=-1)
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return (x @ x.T)[off]


# --- helpers ---------------------------------------------------------------------------


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `weights` > 0; 0 (graph-connected) when no weight is set.

    `torch.where` rather than a product so a non-finite value at a masked position cannot
    leak into the sum.
    """
    keep = weights > 0
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return total / keep.sum().clamp(min=1).to(values.dtype)


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 zero connected to the graph of every input (all-masked or empty batches)."""
    return sum(t.to(torch.float32).sum() * 0.0 for t in tensors)


# --- logits and labels -----------------------------------------------------------------


def logit_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) between temperature-softened distributions, times T².

    Hinton et al. (2015), "Distilling the Knowledge in a Neural Network": the T² factor keeps
    gradient magnitudes comparable across temperatures.
    student_logits, teacher_logits: [batch, classes] or [batch, seq, vocab]; mask:
    [batch] or [batch, seq] (the logits' leading dims), 1 for real rows. Returns the mean
    over real rows of sum_c p_t (log p_t - log p_s).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    log_ps = F.log_softmax(student_logits.to(torch.float32) / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(torch.float32) / temperature, dim=-1)
    per_row = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    if mask is None:
        mask = torch.ones(per_row.shape, device=per_row.device)
    return _masked_mean(per_row, mask) * temperature**2


def hard_label_ce(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100
) -> torch.Tensor:
    """Cross-entropy against integer labels, in float32.

    logits: [batch, classes] or [batch, seq, vocab]; labels: [batch] or [batch, seq] with
    `ignore_index` marking positions that do not count. Mean over counted positions; 0 when
    none counts.
    """
    flat_logits = logits.to(torch.float32).reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not (flat_labels != ignore_index).any():
        return _zero(logits)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)


def hard_label_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a regression head (e.g. STS-B scores), in float32.

    predictions: [batch] or [batch, 1]; targets: [batch].
    """
    if predictions.dim() == targets.dim() + 1 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    if predictions.numel() == 0:
        return _zero(predictions)
    return F.mse_loss(predictions.to(torch.float32), targets.to(torch.float32))


def soft_label_ce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum_c q_c log softmax(logits)_c against probability vectors q.

    Used with MixKD's (Liang et al., 2021) interpolated labels
    q = lam * onehot(y_i) + (1 - lam) * onehot(y_j) (see `distill.core.mixup.mix_labels`).
    logits, target_probs: [batch, classes]. Mean over the batch; 0 for an empty batch.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    log_p = F.log_softmax(logits.to(torch.float32), dim=-1)
    return -(target_probs.to(torch.float32) * log_p).sum(-1).mean()


# --- token hidden states -----------------------------------------------------------------


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 - cos(student token, teacher token).

    DistilBERT (Sanh et al., 2019) cosine embedding loss on the last hidden states.
    student, teacher: [batch, seq, hidden] (same width); mask: [batch, seq].
    """
    cos = F.cosine_similarity(student.to(torch.float32), teacher.to(torch.float32), dim=-1)
    return _masked_mean(1.0 - cos, mask)


# --- self-attention relations (MiniLM / MiniLMv2) ----------------------------------------


def _split_heads(x: torch.Tensor, num_heads: int, name: str) -> torch.Tensor:
    """[batch, seq, width] -> [batch, heads, seq, width / heads] in float32."""
    batch, seq, width = x.shape
    if width % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the width {width} of {name}")
    return x.to(torch.float32).view(batch, seq, num_heads, width // num_heads).transpose(1, 2)


def _log_relation(
    a: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor, num_heads: int, name: str
) -> torch.Tensor:
    """log softmax(a_h b_hᵀ / sqrt(d_head)) over keys: [batch, heads, seq, seq]."""
    a_h, b_h = _split_heads(a, num_heads, name + "_a"), _split_heads(b, num_heads, name + "_b")
    scores = a_h @ b_h.transpose(-1, -2) / math.sqrt(a_h.shape[-1])
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return F.log_softmax(scores, dim=-1)


def repeat_kv_heads(kv: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Grouped-query attention's keys or values as its query heads read them.

    kv: [batch, seq, num_kv_heads * d] -> [batch, seq, num_heads * d], key/value head j
    repeated for query heads j*g .. (j+1)*g - 1, g = num_heads / num_kv_heads (Ainslie et
    al. 2023, GQA; Llama's `repeat_kv`). The identity when the counts match.
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")
    if num_heads == num_kv_heads:
        return kv
    heads = kv.unflatten(-1, (num_kv_heads, -1))
    return heads.repeat_interleave(num_heads // num_kv_heads, dim=-2).flatten(-2)


def relation_kl(
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_heads: int,
    causal: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(teacher relation || student relation) for scaled dot-product relations.

    The generic MiniLM (Wang et al., 2020) / MiniLMv2 (Wang et al., 2021) loss. Each input is
    [batch, seq, width]; student and teacher widths may differ but each must be divisible by
    `num_heads`. Per head h, relation = softmax(a_h b_hᵀ / sqrt(d_head)) over keys, with
    padded keys (mask [batch, seq], 1 for real tokens) and, when `causal`, future keys
    excluded (a decoder's query t sees keys 0..t only). The KL is summed over keys and
    averaged over heads; `reduction="mean"` (the loss) averages it over real query tokens
    too (0 when no token is real), `reduction="none"` returns each query's row [batch, seq]
    float32 (0 at padded queries), as `torch.nn.functional.kl_div` names its reductions.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: unknown {reduction!r}; choose mean or none")
    if student_a.shape[:2] != teacher_a.shape[:2] or mask.shape != student_a.shape[:2]:
        raise ValueError(
            f"student {tuple(student_a.shape)}, teacher {tuple(teacher_a.shape)} and mask "
            f"{tuple(mask.shape)} must share [batch, seq]"
        )
    real = mask > 0
    allowed = real[:, None, None, :]  # [batch, 1, 1 (query), seq (key)]
    if causal:
        seq = mask.shape[1]
        future = torch.ones(seq, seq, dtype=torch.bool, device=mask.device).triu(1)
        allowed = allowed & ~future
    log_ps = _log_relation(student_a, student_b, allowed, num_heads, "student")
    log_pt = _log_relation(teacher_a, teacher_b, allowed, num_heads, "teacher")
    terms = torch.where(allowed, log_pt.exp() * (log_pt - log_ps), torch.zeros_like(log_ps))
    per_query = terms.sum(-1).mean(1)  # summed over keys, averaged over heads
    per_query = torch.where(real, per_query, torch.zeros_like(per_query))
    return per_query if reduction == "none" else _masked_mean(per_query, mask)


def attention_kl(
    s_q: torch.Tensor,
    s_k: torch.Tensor,
    t_q: torch.Tensor,
    t_k: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLM (Wang et al., 2020) self-attention distribution transfer.

    KL between teacher and student attention maps softmax(q kᵀ / sqrt(d_head)), rebuilt from
    queries and keys [batch, seq, width] (e.g. from `distill.core.internals.capture_qkv`);
    `num_heads` is the attention-head count, which MiniLM requires to match. mask: [batch, seq].
    """
    return relation_kl(s_q, s_k, t_q, t_k, mask, num_heads=num_heads, causal=causal)


def value_relation_kl(
    s_v: torch.Tensor,
    t_v: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLM (Wang et al., 2020) value-relation transfer: KL of softmax(v vᵀ / sqrt(d_head)).

    s_v, t_v: [batch, seq, width] values; mask: [batch, seq].
    """
    return relation_kl(s_v, s_v, t_v, t_v, mask, num_heads=num_heads, causal=causal)


def self_attention_relation_kl(
    s_x: torch.Tensor,
    t_x: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_relation_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLMv2 (Wang et al., 2021) multi-head self-attention relation transfer, one relation.

    x is the queries, keys or values [batch, seq, width] of one layer (call once each for the
    Q-Q, K-K and V-V relations); both widths are re-split into `num_relation_heads` relation
    heads, so student and teacher head counts need not match. mask: [batch, seq].
    """
    return relation_kl(s_x, s_x, t_x, t_x, mask, num_heads=num_relation_heads, causal=causal)
