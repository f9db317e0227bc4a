"""Serving: `distill export RUN --format onnx [--quantize int8]`, and the `latency` section
of report.json (batch-1 latency and batch-32 throughput of teacher and student, PyTorch
and ONNX, measured interleaved in the driver; see `distill.core.latency`).

The teacher's ONNX graphs are cached by the teacher folder's content hash under
`$DISTILL_CACHE_DIR/onnx/` (default `~/.cache/distill/onnx/`): every run of the same teacher
reuses them. The student's are built in a scratch folder for the report, and into the
export folder (`onnx/model.onnx`, `onnx/model_int8.onnx`, `onnx/export_check.json`) by
`distill export`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from distill.core.cache_format import folder_digest
from distill.core.export import load_encoder
from distill.core.onnx_export import (
    FP32_TOLERANCE,
    INT8_MIN_COSINE,
    ONNX_DIR,
    OnnxEncoder,
    check_export,
    onnx_files,
)
from distill.core.spec import JobSpec, SpecError

CHECK_FILE = "export_check.json"


def cache_dir() -> Path:
    """Where teachers' ONNX graphs are kept between runs."""
    root = os.environ.get("DISTILL_CACHE_DIR") or Path.home() / ".cache" / "distill"
    return Path(root) / "onnx"


def _texts(eval_rows, count: int = 64) -> list[str]:
    texts = [t for t in eval_rows["text"] if isinstance(t, str) and t.strip()][:count]
    return texts or ["A sentence to time the encoders with."]


def latency_section(spec: JobSpec, teacher_dir: str, student_dir, eval_rows) -> dict | None:
    """report.json's `latency`: {backends: {pytorch|onnx|onnx_int8: {teacher|student:
    {p50_ms, p95_ms, batch32_per_s}}}, onnx_check, settings}; None when
    `evaluation.latency` is none. An encoder that ONNX cannot export keeps its PyTorch
    numbers and the reason (`onnx_error`)."""
    import torch

    e = spec.evaluation
    if e.latency == "none":
        return None
    before = torch.get_num_threads()
    threads = e.latency_threads or before
    torch.set_num_threads(threads)
    try:
        return _latency(spec, teacher_dir, student_dir, eval_rows, threads)
    finally:
        torch.set_num_threads(before)


def _latency(spec: JobSpec, teacher_dir: str, student_dir, eval_rows, threads: int) -> dict:
    from distill.core.latency import measure_latency

    e = spec.evaluation
    texts, max_length = _texts(eval_rows), spec.data.max_length
    teacher, student = load_encoder(teacher_dir), load_encoder(student_dir)
    encoders = {"pytorch": {"teacher": teacher, "student": student}}
    section: dict = {
        "settings": {
            "texts": "held-out",
            "max_length": max_length,
            "rounds": e.latency_rounds,
            "throughput_texts": e.throughput_texts,
            "threads": threads,
            "includes": "tokenization",
        }
    }
    with tempfile.TemporaryDirectory(prefix="distill-onnx-") as scratch:
        if e.latency == "onnx":
            try:
                t_fp32, t_int8 = onnx_files(
                    teacher_dir, cache_dir() / folder_digest(teacher_dir), int8=True
                )
                s_fp32, s_int8 = onnx_files(student_dir, scratch, int8=True)
            except Exception as exc:  # noqa: BLE001 - an architecture the exporter cannot trace
                section["onnx_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            else:
                onnx = {
                    "teacher": OnnxEncoder(t_fp32, teacher.tokenizer, threads),
                    "student": OnnxEncoder(s_fp32, student.tokenizer, threads),
                }
                int8 = {
                    "teacher": OnnxEncoder(t_int8, teacher.tokenizer, threads),
                    "student": OnnxEncoder(s_int8, student.tokenizer, threads),
                }
                encoders.update(onnx=onnx, onnx_int8=int8)
                section["onnx_check"] = {
                    name: check_export(model, onnx[name], int8[name], texts, max_length)
                    for name, model in (("teacher", teacher), ("student", student))
                }
        section["backends"] = measure_latency(
            encoders,
            texts,
            rounds=e.latency_rounds,
            throughput_rounds=e.throughput_rounds,
            throughput_texts=e.throughput_texts,
            batch_size=e.batch_size,
            max_length=max_length,
        )
    return section


def export_onnx_folder(student_dir: Path, spec: JobSpec, eval_texts: list[str], int8: bool) -> dict:
    """Add `onnx/` to an exported student folder and check it against the PyTorch student;
    returns the check (also written to `onnx/export_check.json`). A check that fails its
    stated bound is a SpecError naming the bound."""
    family = json.loads((student_dir / "config.json").read_text()).get("model_type")
    try:
        fp32, quantized = onnx_files(student_dir, student_dir / ONNX_DIR, int8=int8)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(
            f"--format onnx: the {family} student cannot be exported to ONNX "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    reference = load_encoder(student_dir)
    check = check_export(
        reference,
        OnnxEncoder(fp32, reference.tokenizer),
        OnnxEncoder(quantized, reference.tokenizer) if quantized else None,
        eval_texts,
        spec.data.max_length,
    )
    (student_dir / ONNX_DIR / CHECK_FILE).write_text(json.dumps(check, indent=2))
    if not check["fp32_ok"]:
        raise SpecError(
            f"--format onnx: the ONNX student differs from PyTorch by "
            f"{check['fp32_max_abs_diff']:.2g} (tolerance {FP32_TOLERANCE:g})"
        )
    if quantized and not check["int8_ok"]:
        raise SpecError(
            f"--quantize int8: mean cosine to the fp32 embeddings {check['int8_mean_cosine']:.4f} "
            f"is below {INT8_MIN_COSINE}"
        )
    return check
