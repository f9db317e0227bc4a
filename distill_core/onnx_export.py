"""Serving export: an encoder folder (teacher or exported student) as one ONNX graph from
token ids to the sentence embedding, optionally int8-quantized, and an `OnnxEncoder` that
runs it with onnxruntime behind the same `encode` as `export.SentenceEncoder`.

The graph is the whole of distill's embedding: the transformer, mean pooling over the
attention mask (max pooling for a BiLSTM configured so) and the learned projection
(`2_Dense`) when there is one. Inputs `input_ids`, `attention_mask` ([batch, seq] int64,
both axes dynamic); output `sentence_embedding` [batch, width] float32 (not normalised,
as `SentenceEncoder`'s).

Tolerances (checked by `check_export`, stated in `distill export --format onnx` output and
in report.json): fp32 ONNX within `FP32_TOLERANCE` absolute of PyTorch on every embedding
component; int8 (dynamic quantization of the weights, onnxruntime) keeps a mean cosine of at
least `INT8_MIN_COSINE` to the fp32 embeddings.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.core.data import by_length, tokenized_batches
from distill.core.export import SentenceEncoder, load_encoder
from distill.core.outputs import sentence_pool

FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.98
ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
_OPSET = 17
# Texts the export is checked on: short and long (truncated), punctuation, digits, casing.
CHECK_TEXTS = [
    "A quick check that the exported student matches the trained one.",
    "Knowledge distillation compresses a large teacher into a small student.",
    "Short text.",
    "ok",
    "The cat sat on the mat; the dog did not.",
    "Prices rose 3.5% in 2024, the third rise in a row.",
    "WHY IS EVERYTHING IN CAPITALS?",
    "A man is playing a guitar on stage while the crowd sings along.",
    "Two people are walking on a beach at sunset with their dog.",
    "The committee postponed the vote until the next meeting, citing missing documents "
    "and the absence of several members who had asked for more time to review the "
    "proposal, its costs, and its consequences for the regional budget over ten years.",
    "def add(a, b): return a + b",
    "émigré café naïve façade",
]


class PooledEncoder(nn.Module):
    """token ids -> sentence embedding, the graph that is exported."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        super().__init__()
        self.model = encoder.model.eval()
        self.projection = encoder.projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = sentence_pool(self.model, out.last_hidden_state, attention_mask)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return pooled


def export_onnx(folder: str | Path, out_file: str | Path) -> Path:
    """Export the encoder in `folder` (a teacher or an exported student) to `out_file`."""
    encoder = load_encoder(folder)
    graph = PooledEncoder(encoder).eval()
    sample = encoder.tokenizer(
        ["an example sentence for the export", "short"], padding=True, return_tensors="pt"
    )
    args = (sample["input_ids"], sample["attention_mask"])
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["sentence_embedding"]}
    axes = {"batch": 0, "seq": 1}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            # TorchScript-based exporter: 3-4x faster to export than the dynamo one here.
            torch.onnx.export(
                graph,
                args,
                str(out_file),
                opset_version=_OPSET,
                dynamo=False,
                dynamic_axes={
                    "input_ids": {v: k for k, v in axes.items()},
                    "attention_mask": {v: k for k, v in axes.items()},
                    "sentence_embedding": {0: "batch"},
                },
                **names,
            )
        except (TypeError, RuntimeError, ValueError):  # a torch without it: the dynamo exporter
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(
                graph,
                args,
                str(out_file),
                dynamo=True,
                dynamic_shapes={
                    "input_ids": {0: batch, 1: seq},
                    "attention_mask": {0: batch, 1: seq},
                },
                **names,
            )
    return out_file


def quantize_int8(fp32_file: str | Path, int8_file: str | Path) -> Path:
    """Dynamic int8 quantization of the weights (onnxruntime), for CPU serving: per-channel
    scales, 7-bit weights (`reduce_range`).

    Why 7 bits: onnxruntime multiplies the uint8 activations by the int8 weights with
    `vpmaddubsw` on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake / Zen 4), which
    adds each pair of products into an int16 that saturates at 32767. Full-range weights
    (+-127, 2*255*127 = 64770) overflow it, so the same graph is exact on a VNNI host and
    wrong on an AVX2 one (the tiny test student: mean cosine 1.000 vs 0.928). Weights in
    [-64, 64] keep every pair within 2*255*64 = 32640: one result on every CPU, the fast
    uint8 x int8 kernels kept. all-MiniLM-L6-v2 on CHECK_TEXTS: mean cosine 0.989 to PyTorch
    (full-range per-channel weights 0.988 computed exactly, per-tensor 0.955)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger
    try:
        quantize_dynamic(
            str(fp32_file),
            str(int8_file),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )
    finally:
        root.setLevel(level)
    return Path(int8_file)


# Whether onnxruntime's intra-op threads spin-wait after each run (its default) or sleep.
# Spinning keeps the cores busy for a while after every call, which slows whatever runs next
# in the process: the latency rounds alternate ONNX and PyTorch calls, and with spinning the
# PyTorch teacher's batch-1 p50 read 5x its own (142-150 ms vs 27-28 ms; the whole latency
# phase 47-51 s vs 31-32 s; bench/latency_phase.py, docs/benchmarks.md).
SPINNING = False


class OnnxEncoder:
    """An exported graph behind `SentenceEncoder.encode`'s interface."""

    def __init__(
        self,
        onnx_file: str | Path,
        tokenizer,
        threads: int | None = None,
        spinning: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        spin = SPINNING if spinning is None else spinning
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = tokenizer

    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
        chunks = []
        ordered, places = by_length(texts)  # as SentenceEncoder.encode
        for batch in tokenized_batches(self.tokenizer, ordered, batch_size, max_length):
            feeds = {
                "input_ids": batch["input_ids"].numpy().astype(np.int64),
                "attention_mask": batch["attention_mask"].numpy().astype(np.int64),
            }
            chunks.append(torch.from_numpy(self.session.run(None, feeds)[0]))
        return torch.cat(chunks)[places] if chunks else torch.empty(0)


def check_export(
    reference: SentenceEncoder,
    fp32: OnnxEncoder,
    int8: OnnxEncoder | None,
    texts: list[str],
    max_length: int,
) -> dict:
    """How close the ONNX graphs come to the PyTorch embeddings on `texts`: the fp32 graph's
    largest absolute difference, the int8 graph's mean cosine to the fp32 embeddings, the
    stated bounds and whether both hold."""
    expected = reference.encode(texts, max_length=max_length)
    got = fp32.encode(texts, max_length=max_length)
    result = {
        "texts": len(texts),
        "fp32_max_abs_diff": float((got - expected).abs().max()),
        "fp32_tolerance": FP32_TOLERANCE,
    }
    result["fp32_ok"] = result["fp32_max_abs_diff"] <= FP32_TOLERANCE
    if int8 is not None:
        quantized = int8.encode(texts, max_length=max_length)
        cosine = nn.functional.cosine_similarity(quantized, expected, dim=-1)
        result.update(
            int8_mean_cosine=float(cosine.mean()),
            int8_min_cosine=float(cosine.min()),
            int8_min_mean_cosine=INT8_MIN_COSINE,
            int8_ok=float(cosine.mean()) >= INT8_MIN_COSINE,
        )
    return result


def onnx_files(folder: str | Path, out_dir: str | Path, *, int8: bool) -> tuple[Path, Path | None]:
    """Export `folder` into `out_dir` (`model.onnx`, and `model_int8.onnx` with `int8`);
    files already there from an earlier export of the same folder are reused."""
    out_dir = Path(out_dir)
    fp32 = out_dir / FP32_FILE
    if not fp32.is_file():
        partial = out_dir / f".{FP32_FILE}.{os.getpid()}"
        export_onnx(folder, partial)
        os.replace(partial, fp32)
    quantized = None
    if int8:
        quantized = out_dir / INT8_FILE
        if not quantized.is_file():
            partial = out_dir / f".{INT8_FILE}.{os.getpid()}"
            quantize_int8(fp32, partial)
            os.replace(partial, quantized)
    return fp32, quantized
