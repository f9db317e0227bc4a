"""The model card `student/README.md`: generated from report.json with the report's numbers,
the student's shape, method and data, and the way to load what the folder holds."""

from __future__ import annotations

import copy

from helpers.reports import GOOD_REPORT

from distill.core.spec_loading import load_spec
from distill.jobs.model_card import model_card, write_model_card

REPORT = copy.deepcopy(GOOD_REPORT)
REPORT["teacher"] = {
    "name": "sentence-transformers/all-MiniLM-L6-v2",
    "family": "encoder",
    "parameters": 22713216,
    "layers": 6,
    "hidden": 384,
}
REPORT["student"] = {
    "parameters": 11355264,
    "layers": 3,
    "hidden": 384,
    "heads": 12,
    "ffn": 1536,
    "init": "every_other_layer",
    "kind": "transformer",
}
REPORT["size"] = {
    "teacher_parameters": 22713216,
    "student_parameters": 11355264,
    "compression": 2.0002,
}
REPORT["quality"] = {
    "metric": "sts_spearman",
    "split": "sts-test.csv",
    "n": 1379,
    "teacher": 0.8203,
    "student": 0.7712,
    "retention": 0.9401,
}
REPORT["latency"] = {
    "backends": {
        "pytorch": {
            "teacher": {"p50_ms": 9.0, "p95_ms": 11.0},
            "student": {"p50_ms": 4.5, "p95_ms": 5.5},
        }
    }
}


def test_the_card_carries_the_report_numbers_and_how_to_load():
    spec = load_spec(
        None,
        [
            "training.gradient_accumulation_steps=2",
            "objective.weights={hidden_mse: 1, pooled_cosine: 1}",  # as preflight resolves them
        ],
    )
    card = model_card(REPORT, spec, has_st=True)
    assert card.startswith(
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
    )
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "| sts_spearman (sts-test.csv, n=1379) | 0.8203 | 0.7712 | 0.94 retained |" in card
    assert "| parameters | 22,713,216 | 11,355,264 | 2x smaller |" in card
    assert "| batch-1 p50 ms (PyTorch) | 9 | 4.5 | 2x faster |" in card
    assert "3 layers, hidden 384, 12 heads, ffn 1536 (init `every_other_layer`)" in card
    assert "`hidden_mse` x 1, `pooled_cosine` x 1" in card
    assert "x 2 accumulated" in card
    assert 'SentenceTransformer("student")' in card
    assert "AutoModelForSequenceClassification" not in card


def test_a_task_student_card_shows_the_classifier(tmp_path):
    report = copy.deepcopy(REPORT)
    report["task"] = {
        "metric": "accuracy",
        "n": 64,
        "teacher": 0.9,
        "student": 0.85,
        "retention": 0.944,
    }
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "modeling_distill.py").write_text("")
    spec = load_spec(None, ["task.type=classification"])
    path = write_model_card(tmp_path / "student", report, spec)
    card = path.read_text()
    assert path == tmp_path / "student" / "README.md"
    assert "pipeline_tag: text-classification" in card
    assert "| task accuracy (n=64) | 0.9 | 0.85 | 0.944 retained |" in card
    assert 'pipeline("text-classification", model="student", trust_remote_code=True)' in card
    assert "SentenceTransformer" not in card
