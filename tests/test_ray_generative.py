"""Integration: the two LightPAFF generative examples (GPT-2-style decoder, BART-style
seq2seq) through `--smoke` as real 2-worker Ray Train + DeepSpeed ZeRO-2 pipelines: a
teacher trained from scratch, pre-training distillation, a fine-tuned teacher and
fine-tuning distillation. Checks the losses drop, the export reloads with the Auto LM
classes to the trained model's logits, the report compares perplexity / BLEU / tokens per
second, sequence-level KD's cached generations, and a resume in the middle of the pipeline.
(tests/test_examples.py leaves these two examples to this file.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from cluster.run_files import PROBE_FILE, PROBE_TEXTS
from distill_core.generative import probe_logits
from jobs.run import run_job
from jobs.spec import load_spec
from jobs.stages import smoke_pipeline

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FAST = [
    "evaluation.throughput_texts=8",
    "evaluation.throughput_rounds=1",
    "evaluation.generation_length=8",
    "evaluation.batch_size=8",
    "data.max_eval_samples=16",
]


def _stage_history(run_dir: Path, stage: str) -> list[dict]:
    checkpoints = sorted(p for p in (run_dir / "stages" / stage).glob("checkpoint_*") if p.is_dir())
    return json.loads((checkpoints[-1] / "train_state.json").read_text())["history"]


def _smoke(example: str, extra: list[str]):
    # Smoke caps each stage at 20 steps; these tests use 8, enough to see the loss drop.
    overrides = FAST + extra + [f"stages.{i}.training.steps=8" for i in range(4)]
    overrides += [f"stages.{i}.training.learning_rate=0.002" for i in range(4)]
    return smoke_pipeline(load_spec(ROOT / "examples" / example, overrides))


def _final_probe(run_dir: Path, stage: str) -> torch.Tensor:
    done = json.loads((run_dir / "stages" / stage / "done.json").read_text())
    return torch.load(Path(done["checkpoint"]) / PROBE_FILE)


def _check_pipeline(run_dir: Path, report: dict, stages: list[str], auto) -> None:
    assert [s["name"] for s in report["stages"]] == stages
    for stage in stages:
        history = _stage_history(run_dir, stage)
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        assert evals[-1] < evals[0], (stage, evals)  # every stage learns
    assert report["teacher_check"]["unchanged"] is True
    # The export reloads with the Auto LM class to exactly the trained model's logits.
    student = auto.from_pretrained(run_dir / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "student")
    expected = _final_probe(run_dir, stages[-1])
    torch.testing.assert_close(probe_logits(student, tokenizer, PROBE_TEXTS, 64), expected,
                               atol=1e-5, rtol=0)
    assert report["export_check"]["max_abs_diff"] < 1e-5
    assert report["size"]["student_parameters"] < report["size"]["teacher_parameters"] / 1.5
    q = report["quality"]
    assert q["metric"] == "perplexity" and q["teacher"] > 1 and q["student"] > 1
    assert report["speed"]["unit"] == "tokens/s" and report["speed"]["student"] > 0
    assert report["speed"]["teacher"] > 0


def test_lightpaff_gpt2_pipeline_distils_exports_and_resumes_mid_way(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = []
    if not (SHARED / "sst2" / "train.tsv").is_file():  # offline CI: the task text is built in
        extra = [f"stages.{i}.data.train.path=builtin:docstrings" for i in (2, 3)]
    run_dir = tmp_path / "gpt2"
    stages = ["teacher_lm", "pretrain_kd", "teacher_ft", "finetune_kd"]
    report = run_job(_smoke("lightpaff_gpt2.yaml", extra), str(run_dir))
    _check_pipeline(run_dir, report, stages, AutoModelForCausalLM)
    assert report["teacher"]["family"] == "causal"
    last = _stage_history(run_dir, "finetune_kd")[-1]
    assert {"loss_lm", "loss_token_kl"} <= set(last)
    # The distillation stages carry one student on: finetune_kd started from pretrain_kd's
    # result, so its first loss is below pretrain_kd's first.
    assert _stage_history(run_dir, "finetune_kd")[0]["loss_lm"] < _stage_history(run_dir, "pretrain_kd")[0]["loss_lm"]

    # Resume mid-pipeline: finished stages are skipped, the last continues from its step 8.
    finished = {s: sorted((run_dir / "stages" / s).glob("checkpoint_2*")) for s in stages[:3]}
    first = _stage_history(run_dir, "finetune_kd")
    resumed = run_job(_smoke("lightpaff_gpt2.yaml", extra + ["stages.3.training.steps=12"]), str(run_dir))
    for stage, checkpoints in finished.items():
        assert sorted((run_dir / "stages" / stage).glob("checkpoint_2*")) == checkpoints
    history = _stage_history(run_dir, "finetune_kd")
    assert [h["step"] for h in history][-2:] == [10, 12] and history[: len(first)] == first
    assert resumed["training"]["steps"] == 12


def test_lightpaff_seq2seq_pipeline_with_sequence_level_kd(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "bart"
    stages = ["teacher_lm", "pretrain_kd", "teacher_ft", "finetune_kd"]
    report = run_job(_smoke("lightpaff_seq2seq.yaml", []), str(run_dir))
    _check_pipeline(run_dir, report, stages, AutoModelForSeq2SeqLM)
    assert report["teacher"]["family"] == "seq2seq"
    assert report["student"]["layers"] == 1 and report["student"]["decoder_layers"] == 1
    assert report["task"]["metric"] == "bleu" and report["task"]["n"] == 16
    assert 0 <= report["task"]["student"] <= 100
    # Sequence-level KD: the fine-tuned teacher's generations were cached in the run's
    # storage, one per training source, and finetune_kd trained on them.
    (cache,) = (run_dir / "teacher_generations").glob("*.jsonl")
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 256 and all(set(r) == {"source", "target"} for r in rows)
    assert {"loss_lm", "loss_token_kl"} <= set(_stage_history(run_dir, "finetune_kd")[-1])
    assert {"loss_lm", "loss_token_jsd"} <= set(_stage_history(run_dir, "pretrain_kd")[-1])
