"""Quality, speed and size of a student against its teacher.

Quality is STS Spearman (cosine of mean-pooled embeddings vs gold scores) when STS pairs
are given, else the mean cosine agreement between student and teacher embeddings on the
held-out texts. `builtin:sts-sample` names the STS pairs shipped with the package (375
CC BY-SA pairs of the STS Benchmark dev split, notice in `samples/LICENSE.txt`): the
offline quickstart's quality. Throughput is measured for both models in the same process,
interleaved, so machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from distill.core.data import StsPairs, tokenized_batches
from distill.core.export import SentenceEncoder
from distill.core.losses import pairwise_cosines


def sts_spearman(encoder: SentenceEncoder, pairs: StsPairs, max_length: int = 128) -> float:
    return spearman_of_embeddings(lambda texts: encoder.encode(texts, max_length=max_length), pairs)


def spearman_of_embeddings(embed: Callable[[list[str]], torch.Tensor], pairs: StsPairs) -> float:
    """Spearman between gold scores and the cosine of `embed`'s vectors of each pair."""
    a, b = embed(pairs.first), embed(pairs.second)
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
    return float(spearmanr(cos.cpu().numpy(), pairs.scores).statistic)


def cosine_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean cosine between student and teacher embeddings of the same texts."""
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean())


def similarity_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosine similarities (off-diagonal) of the same
    texts in student and teacher space: agreement when the widths differ (no projection)."""
    pairs = torch.stack([pairwise_cosines(student), pairwise_cosines(teacher)])
    return float(torch.corrcoef(pairs)[0, 1])


def measure_throughput(
    encoders: dict[str, SentenceEncoder],
    texts: list[str],
    *,
    rounds: int = 3,
    batch_size: int = 32,
    max_length: int = 128,
) -> dict[str, float]:
    """Sentences/s per encoder: a warm-up pass, then `rounds` interleaved timed passes; the
    median round counts."""
    for enc in encoders.values():
        enc.encode(texts[:batch_size], batch_size=batch_size, max_length=max_length)
    timings: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.encode(texts, batch_size=batch_size, max_length=max_length)
            timings[name].append(time.perf_counter() - start)
    return {name: len(texts) / statistics.median(t) for name, t in timings.items()}


@torch.no_grad()
def task_scores(folder, rows, *, max_length: int = 128, batch_size: int = 64) -> float:
    """A model folder's own task head on labelled rows (`text`, optional `text_pair`,
    `label`): accuracy for classification, Spearman for regression."""
    from distill.core.export import load_encoder
    from distill.core.outputs import TaskHead, forward_outputs

    encoder, head = load_encoder(folder), TaskHead.load(folder)
    if head is None:
        raise ValueError(f"{folder}: no task head to evaluate")
    head.eval()
    preds = []
    pairs = rows["text_pair"] if "text_pair" in rows.column_names else None
    batches = tokenized_batches(
        encoder.tokenizer, rows["text"], batch_size, max_length, pairs=pairs
    )
    for batch in batches:
        logits = forward_outputs(encoder.model, batch, head=head).logits
        preds.append(logits.argmax(-1) if head.task_type == "classification" else logits[:, 0])
    predicted = torch.cat(preds)
    labels = torch.tensor(rows["label"])
    if head.task_type == "classification":
        return float((predicted == labels).float().mean())
    return float(spearmanr(predicted.numpy(), labels.numpy()).statistic)
