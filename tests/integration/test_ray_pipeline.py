"""Integration: a multi-stage pipeline (fine-tuned teacher -> MixKD task distillation with
MiniLMv2 relations) as ONE real 2-worker Ray Train + DeepSpeed run, resumed mid-pipeline.
The BiLSTM student's job is examples/bert_to_lstm.yaml in tests/test_examples.py."""

from __future__ import annotations

import json

import pytest

from distill.core.export import load_encoder
from distill.core.outputs import TaskHead
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

TINY = [
    "training.batch_size=8",
    "training.log_every=2",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "training.warmup_steps=1",
    "data.max_length=24",
    "data.max_eval_samples=16",
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
]

PIPELINE = """
task: {{type: classification, num_labels: 2}}
data:
  train: {{path: {data}}}
stages:
  - name: teacher_ft
    kind: finetune
    objective: {{weights: {{hard_label: 1.0}}}}
    training: {{steps: 4, learning_rate: 1.0e-4}}
  - name: mixkd
    teacher: {{name: "stage:teacher_ft"}}
    student: {{layers: 2, hidden: 192, heads: 6, init: width_slice}}
    objective:
      weights: {{logit_kl: 1.0, hard_label: 1.0, minilmv2_relations: 1.0}}
      relation_heads: 12
      temperature: 2.0
      mixup: {{alpha: 0.4, weight: 0.5}}
    training: {{steps: 4, learning_rate: 5.0e-4}}
"""


def _labelled(tmp_path):
    good = ["a warm and funny and moving film", "great acting and a lovely story", "i loved it"]
    bad = ["a dull and lifeless mess", "the plot makes no sense at all", "i hated every minute"]
    rows = ["sentence,label"] + [f"{good[i % 3]} {i},1" for i in range(60)]
    rows += [f"{bad[i % 3]} {i},0" for i in range(60)]
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _checkpoint_states(run_dir) -> list[dict]:
    """train_state.json of every kept checkpoint of the run's one Ray Train run, oldest first."""
    checkpoints = sorted(p for p in (run_dir / "train").glob("checkpoint_*") if p.is_dir())
    return [json.loads((c / "train_state.json").read_text()) for c in checkpoints]


def _stage_history(run_dir, stage: str) -> list[dict]:
    return [s for s in _checkpoint_states(run_dir) if s["stage"] == stage][-1]["history"]


def _check_hf_task_student(student, report) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from distill.core.outputs import forward_outputs

    texts = ["a good movie", "an awful film"]
    tokenizer = AutoTokenizer.from_pretrained(student)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    encoder, head = load_encoder(student), TaskHead.load(student).eval()
    model = AutoModelForSequenceClassification.from_pretrained(student, trust_remote_code=True)
    with torch.no_grad():
        expected = head(forward_outputs(encoder.model, batch).pooled)
        torch.testing.assert_close(model.eval()(**batch).logits, expected, atol=1e-5, rtol=0)
    classify = pipeline("text-classification", model=str(student), trust_remote_code=True)
    assert [r["label"] for r in classify(texts)] == [
        f"LABEL_{i}" for i in expected.argmax(-1).tolist()
    ]
    card = (student / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    task = report["task"]
    assert f"| task accuracy (n={task['n']}) |" in card
    assert "teacher_ft (finetune" in card and "mixkd (distill" in card


@pytest.mark.slow(
    reason=(
        "a 2-stage pipeline (finetune, then MixKD) trained, then resumed; the default suite "
        "runs ernie_tiny --smoke (4 stages) and resumes lightpaff_gpt2 mid-pipeline in "
        "test_examples.py"
    )
)
def test_pipeline_runs_every_stage_and_resumes_mid_pipeline(ray_session, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(PIPELINE.format(data=_labelled(tmp_path)))
    run_dir = tmp_path / "run"
    report = run_job(load_spec(config, TINY), str(run_dir))

    assert [s["name"] for s in report["stages"]] == ["teacher_ft", "mixkd"]
    for stage in ("teacher_ft", "mixkd"):
        assert (run_dir / "stages" / stage / "done.json").is_file()
    # One worker group ran both stages: every checkpoint is in the one Ray Train run.
    assert not list((run_dir / "stages").glob("*/checkpoint_*"))
    assert [s["stage"] for s in _checkpoint_states(run_dir)] == ["teacher_ft", "mixkd"]
    # The fine-tuned teacher's export (with its task head) stays in the run's storage for
    # later stages; the student has its own head, and the report compares the two heads'
    # accuracy on the held-out rows.
    teacher_export = run_dir / "stages/teacher_ft/student"
    assert TaskHead.load(teacher_export) is not None
    assert TaskHead.load(run_dir / "student").linear.out_features == 2
    assert report["task"]["metric"] == "accuracy" and 0 <= report["task"]["student"] <= 1
    assert load_encoder(run_dir / "student").model.config.hidden_size == 192
    # The task student is HF-native: the Auto class and pipeline load its trained head, and
    # its model card carries the report's numbers.
    _check_hf_task_student(run_dir / "student", report)
    history = _stage_history(run_dir, "mixkd")
    assert {"loss_logit_kl", "loss_minilmv2_relations", "loss_mix_logit_kl"} <= set(history[-1])
    assert {h["stage"] for h in history} == {"mixkd"}
    assert report["teacher_check"]["unchanged"] is True

    # Resume mid-pipeline: the finished stage is skipped (its export untouched), the last
    # one continues from its step-4 checkpoint to step 8 with its earlier history kept.
    done = (run_dir / "stages/teacher_ft/done.json").read_text()
    exported = (teacher_export / "model.safetensors").stat().st_mtime_ns
    resumed = run_job(load_spec(config, TINY + ["stages.1.training.steps=8"]), str(run_dir))
    assert (run_dir / "stages/teacher_ft/done.json").read_text() == done
    assert (teacher_export / "model.safetensors").stat().st_mtime_ns == exported
    steps = [h["step"] for h in _stage_history(run_dir, "mixkd")]
    assert steps == [2, 4, 6, 8]
    assert _stage_history(run_dir, "mixkd")[:2] == history[:2]
    assert resumed["training"]["steps"] == 8
