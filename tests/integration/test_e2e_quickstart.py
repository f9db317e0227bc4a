"""End to end: the real `distill run` CLI on the packaged teacher, as a user runs it (README
command 1 with --smoke, in the default suite; the SST-2 variant is slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.ray

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _distill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_quickstart_smoke_produces_report_and_loadable_student(tmp_path):
    run_dir = tmp_path / "quickstart"
    done = _distill(
        "run", "--smoke", "--output", str(run_dir), "--set", "training.steps=8", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[distill] step 8/8" in done.stdout + done.stderr

    report = json.loads((run_dir / "report.json").read_text())
    # Scored on the packaged STS sample: an STS Spearman for teacher and student.
    quality = report["quality"]
    assert quality["metric"] == "sts_spearman" and quality["split"] == "builtin:sts-sample"
    # --smoke scores the sample's first 200 pairs (all 375 without it); all-MiniLM-L6-v2: 0.899
    assert quality["n"] == 200 and 0.85 < quality["teacher"] < 0.95
    assert quality["retention"] == pytest.approx(quality["student"] / quality["teacher"])
    assert report["student"]["layers"] == 3 and report["teacher"]["layers"] == 6
    assert report["training"]["final_loss"] < report["training"]["first_loss"]
    assert report["speed"]["speedup"] > 1.0  # half the depth encodes faster, same process

    table = _distill("report", str(run_dir), cwd=tmp_path)
    assert table.returncode == 0 and "throughput" in table.stdout
    as_json = json.loads(_distill("report", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert as_json == report

    # The export loads with transformers and as a sentence-transformers model, with the
    # teacher's tokenizer ids and the trained model's embeddings.
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from distill.core.export import load_encoder
    from distill.core.teacher import PACKAGED_TEACHER, resolve_teacher

    student_dir = run_dir / "student"
    assert AutoModel.from_pretrained(student_dir).config.num_hidden_layers == 3
    texts = ["The student mirrors its teacher.", "Ray runs the workers."]
    teacher_tok = AutoTokenizer.from_pretrained(resolve_teacher(PACKAGED_TEACHER))
    student_tok = AutoTokenizer.from_pretrained(student_dir)
    assert student_tok(texts)["input_ids"] == teacher_tok(texts)["input_ids"]
    ours = load_encoder(student_dir).encode(texts)
    st = SentenceTransformer(str(student_dir), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=-1), st, atol=1e-5)

    # What a user watches and serves: curves, TensorBoard events, the model card with the
    # report's numbers, batch-1 latency on every backend, and a checked ONNX export.
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    card = (student_dir / "README.md").read_text()
    assert f"| {report['quality']['student']:.4g} |" in card
    latency = report["latency"]["backends"]
    assert set(latency) == {"pytorch", "onnx", "onnx_int8"}
    assert latency["onnx"]["student"]["p50_ms"] > 0
    assert report["latency"]["onnx_check"]["student"]["fp32_ok"]
    assert "batch-1 p50 ms (ONNX int8)" in table.stdout
    serving = tmp_path / "serving"
    onnx = _distill(
        "export",
        str(run_dir),
        "--out",
        str(serving),
        "--format",
        "onnx",
        "--quantize",
        "int8",
        cwd=tmp_path,
    )
    assert onnx.returncode == 0, onnx.stderr[-3000:]
    check = json.loads((serving / "onnx" / "export_check.json").read_text())
    assert check["fp32_max_abs_diff"] <= 1e-4 and check["int8_mean_cosine"] >= 0.98


@pytest.mark.slow(
    reason=(
        "a second CLI run of the packaged teacher, on SST-2 with STS-B evaluation; the default "
        "quickstart test drives the same CLI path on the built-in data"
    )
)
@pytest.mark.skipif(
    not (SHARED / "sst2" / "train.tsv").is_file(), reason="../shared/data (SST-2, STS-B) is absent"
)
def test_sst2_training_with_sts_evaluation(tmp_path):
    run_dir = tmp_path / "sst2"
    done = _distill(
        "run",
        "--smoke",
        "--output",
        str(run_dir),
        "--set",
        f"data.train.path={SHARED / 'sst2' / 'train.tsv'}",
        f"evaluation.sts_path={SHARED / 'stsb' / 'sts-dev.csv'}",
        "training.steps=8",
        "student.layers=2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    quality = report["quality"]
    assert quality["metric"] == "sts_spearman" and quality["n"] == 200
    assert 0.75 < quality["teacher"] < 0.95  # all-MiniLM-L6-v2 on STS-B dev pairs
    assert quality["retention"] == pytest.approx(quality["student"] / quality["teacher"])
