"""Serving: the ONNX export reproduces the PyTorch embeddings within the stated tolerance
(int8 within its stated cosine), `distill export --format onnx` writes and checks it, and
report.json's latency section holds batch-1 p50/p95 and batch-32 throughput for teacher
and student on every backend."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from datasets import Dataset
from helpers.reports import GOOD_REPORT

from distill.core.export import export_student, load_encoder
from distill.core.onnx_export import (
    CHECK_TEXTS,
    FP32_TOLERANCE,
    INT8_MIN_COSINE,
    OnnxEncoder,
    onnx_files,
)
from distill.core.spec_loading import load_spec
from distill.core.student import StudentSize, build_student
from distill.jobs import cli
from distill.jobs.report import format_table, pytorch_speed
from distill.jobs.serving import latency_section


@pytest.fixture
def student_dir(tmp_path, tiny_bert, tiny_tokenizer):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        student = build_student(tiny_bert, StudentSize(layers=2, hidden=32, heads=4, ffn=64))
        projection = torch.nn.Linear(32, 48)
    return export_student(
        student.eval(), tiny_tokenizer, tmp_path / "student", projection=projection
    )


def test_onnx_reproduces_the_pytorch_embeddings(student_dir, tmp_path):
    fp32, int8 = onnx_files(student_dir, tmp_path / "onnx", int8=True)
    reference = load_encoder(student_dir)
    texts = ["the cat sat on the mat", "a very good movie indeed", "no"]
    expected = reference.encode(texts, max_length=32)
    assert expected.shape == (3, 48)  # the projection is part of the graph
    got = OnnxEncoder(fp32, reference.tokenizer).encode(texts, max_length=32)
    assert float((got - expected).abs().max()) <= FP32_TOLERANCE
    quantized = OnnxEncoder(int8, reference.tokenizer).encode(texts, max_length=32)
    cosine = torch.nn.functional.cosine_similarity(quantized, expected, dim=-1)
    assert float(cosine.mean()) >= INT8_MIN_COSINE
    assert int8.stat().st_size < fp32.stat().st_size


def test_int8_weights_cannot_saturate_the_avx2_int16_pair_sums(student_dir, tmp_path):
    # x86 CPUs without VNNI add each pair of uint8 x int8 products into a saturating int16:
    # full-range weights gave this student a mean cosine of 0.93 there and 1.00 on VNNI hosts.
    _, int8 = onnx_files(student_dir, tmp_path / "onnx", int8=True)
    graph = onnx.load(str(int8)).graph
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(matmuls) == 13  # 6 Linear layers in each of 2 blocks, and the projection
    for node in matmuls:
        quantized = weights[node.input[1]].astype(int)
        assert 2 * 255 * int(abs(quantized).max()) <= 32767, node.name


def test_export_format_onnx_writes_checks_and_describes_it(student_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    student_dir.rename(run / "student")
    (run / "config.yaml").write_text("data: {max_length: 32}\n")
    (run / "report.json").write_text(json.dumps(GOOD_REPORT))
    out = tmp_path / "serving"
    args = ["export", str(run), "--out", str(out), "--format", "onnx", "--quantize", "int8"]
    assert cli.main(args) == 0
    check = json.loads((out / "onnx" / "export_check.json").read_text())
    assert check["fp32_ok"] and check["int8_ok"] and check["texts"] == len(CHECK_TEXTS)
    assert (out / "onnx" / "model_int8.onnx").is_file()
    assert "onnx/model.onnx" in (out / "README.md").read_text()
    printed = capsys.readouterr().out
    assert f"onnx: {out}/onnx/model.onnx (max abs diff to PyTorch" in printed


def test_quantize_needs_the_onnx_format(tmp_path, capsys):
    assert (
        cli.main(["export", str(tmp_path), "--out", str(tmp_path / "o"), "--quantize", "int8"]) == 2
    )
    assert capsys.readouterr().err.strip() == "distill: error: --quantize: goes with --format onnx"


def test_latency_section_times_teacher_and_student_on_every_backend(
    teacher_dir, student_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    spec = load_spec(
        None,
        ["data.max_length=32", "evaluation.latency_rounds=8", "evaluation.throughput_texts=16"],
    )
    rows = Dataset.from_dict({"text": ["the cat sat on the mat", "a good movie", "no"]})
    section = latency_section(spec, str(teacher_dir), student_dir, rows)
    assert set(section["backends"]) == {"pytorch", "onnx", "onnx_int8"}
    for models in section["backends"].values():
        for timing in (models["teacher"], models["student"]):
            assert 0 < timing["p50_ms"] <= timing["p95_ms"]
            assert timing["batch32_per_s"] > 0
    assert (
        section["onnx_check"]["student"]["fp32_ok"] and section["onnx_check"]["teacher"]["fp32_ok"]
    )
    assert any((tmp_path / "cache" / "onnx").iterdir())  # the teacher's graphs are kept
    table = format_table({**GOOD_REPORT, "latency": section})
    assert "batch-1 p50 ms (ONNX int8)" in table and "batch-32 texts/s (PyTorch)" in table

    off = load_spec(None, ["evaluation.latency=none"])
    assert latency_section(off, str(teacher_dir), student_dir, rows) is None

    # The report's speed section takes these PyTorch rates instead of timing both models
    # again, unless the rounds ran at other threads than the run's.
    speed = pytorch_speed(section)
    assert speed["teacher"] == section["backends"]["pytorch"]["teacher"]["batch32_per_s"]
    assert speed["student"] == section["backends"]["pytorch"]["student"]["batch32_per_s"]
    assert speed["texts"] == 16 and speed["measured_in"] == "latency"
    other = {**section, "settings": {**section["settings"], "threads": speed["threads"] + 1}}
    assert pytorch_speed(other) is None and pytorch_speed(None) is None


def test_the_speed_section_reuses_the_latency_rounds(
    teacher_dir, student_dir, tmp_path, monkeypatch
):
    """build_report times the latency rounds first; the family's speed section is their
    PyTorch batch throughput, not a second measurement of the same thing."""
    from transformers import AutoConfig

    from distill.core.export import PROBE_TEXTS
    from distill.core.family_registry import family_of

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    spec = load_spec(
        None,
        ["data.max_length=32", "evaluation.latency_rounds=4", "evaluation.throughput_texts=16"],
    )
    rows = Dataset.from_dict({"text": ["the cat sat on the mat", "a good movie", "no"]})
    family = family_of(AutoConfig.from_pretrained(teacher_dir))
    timed = []
    monkeypatch.setattr(
        "distill.core.encoder_family.measure_throughput",
        lambda *a, **k: timed.append(1) or {"teacher": 1.0, "student": 2.0},
    )
    probe = load_encoder(student_dir).encode(PROBE_TEXTS, max_length=32)
    latency = latency_section(spec, str(teacher_dir), student_dir, rows)
    sections = family.evaluate(
        spec, str(teacher_dir), student_dir, rows, probe, speed=pytorch_speed(latency)
    )
    assert not timed and sections["speed"]["measured_in"] == "latency"
    assert sections["speed"]["speedup"] == pytest.approx(
        sections["speed"]["student"] / sections["speed"]["teacher"]
    )
    without = family.evaluate(spec, str(teacher_dir), student_dir, rows, probe)
    assert timed == [1] and without["speed"]["teacher"] == 1.0  # no latency: timed here
