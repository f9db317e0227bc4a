"""Serving speed of encoders: batch-1 latency (p50, p95) and batch-32 throughput, measured
interleaved in one process so every backend and model sees the same machine state.

An encoder is anything with `encode(texts, batch_size=, max_length=)` (PyTorch
`SentenceEncoder`, onnxruntime `OnnxEncoder`). Times include tokenization, as a served
request would. Each latency round times one call per (backend, model) on the same text, in
an order rotated every round; throughput rounds likewise encode the same texts in batches
of `batch_size`, and the median round counts.
"""

from __future__ import annotations

import statistics
import time
from typing import Protocol


class Encoder(Protocol):
    def encode(self, texts: list[str], batch_size: int = ..., max_length: int = ...): ...


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low, high = int(at), min(int(at) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def measure_latency(
    encoders: dict[str, dict[str, Encoder]],
    texts: list[str],
    *,
    rounds: int = 100,
    throughput_rounds: int = 3,
    throughput_texts: int = 256,
    batch_size: int = 32,
    max_length: int = 128,
) -> dict[str, dict[str, dict[str, float]]]:
    """{backend: {model: {p50_ms, p95_ms, batch32_per_s}}} for `encoders` given as
    {backend: {model: encoder}} (e.g. {"pytorch": {"teacher": ..., "student": ...}})."""
    runs = [(b, m, enc) for b, models in encoders.items() for m, enc in models.items()]
    bulk = (texts * (throughput_texts // max(len(texts), 1) + 1))[:throughput_texts]
    for _, _, enc in runs:  # warm-up: allocators, thread pools, lazy initialisation
        enc.encode(texts[:1], batch_size=1, max_length=max_length)
        enc.encode(bulk[:batch_size], batch_size=batch_size, max_length=max_length)
    single: dict[tuple[str, str], list[float]] = {(b, m): [] for b, m, _ in runs}
    for r in range(rounds):
        text = [texts[r % len(texts)]]
        shift = r % len(runs)
        for b, m, enc in runs[shift:] + runs[:shift]:
            start = time.perf_counter()
            enc.encode(text, batch_size=1, max_length=max_length)
            single[(b, m)].append(time.perf_counter() - start)
    bulk_times: dict[tuple[str, str], list[float]] = {(b, m): [] for b, m, _ in runs}
    for r in range(throughput_rounds):
        shift = r % len(runs)
        for b, m, enc in runs[shift:] + runs[:shift]:
            start = time.perf_counter()
            enc.encode(bulk, batch_size=batch_size, max_length=max_length)
            bulk_times[(b, m)].append(time.perf_counter() - start)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for b, m, _ in runs:
        out.setdefault(b, {})[m] = {
            "p50_ms": 1000 * statistics.median(single[(b, m)]),
            "p95_ms": 1000 * _percentile(single[(b, m)], 0.95),
            f"batch{batch_size}_per_s": len(bulk) / statistics.median(bulk_times[(b, m)]),
        }
    return out
