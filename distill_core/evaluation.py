"""Quality, speed and size of a student against its teacher.

Quality is STS Spearman (cosine of mean-pooled embeddings vs gold scores) when STS pairs
are given, else the mean cosine agreement between student and teacher embeddings on the
held-out texts. Throughput is measured for both models in the same process, interleaved,
so machine noise hits both alike.
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from distill_core.export import SentenceEncoder


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]


def load_sts_pairs(path: str, limit: int | None = None) -> StsPairs:
    """STS Benchmark file: tab-separated, no header; fields 5-7 are score, s1, s2.
    Extra trailing fields on a few lines are ignored."""
    first, second, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            first.append(row[5])
            second.append(row[6])
            if limit is not None and len(scores) >= limit:
                break
    if not scores:
        raise ValueError(
            f"evaluation.sts_path: {path} has no STS rows (expected 7 tab-separated fields)"
        )
    return StsPairs(first, second, scores)


def sts_spearman(encoder: SentenceEncoder, pairs: StsPairs, max_length: int = 128) -> float:
    a = encoder.encode(pairs.first, max_length=max_length)
    b = encoder.encode(pairs.second, max_length=max_length)
    cos = F.cosine_similarity(a, b, dim=-1)
    return float(spearmanr(cos.numpy(), pairs.scores).statistic)


def cosine_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean cosine between student and teacher embeddings of the same texts."""
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean())


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
