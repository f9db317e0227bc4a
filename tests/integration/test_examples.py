"""Every example in examples/ runs through `distill run --smoke` (in-process, on the shared
Ray session). Examples that need labelled task data skip when ../shared/data is absent;
task-agnostic ones then distil on the built-in corpus instead.

The two generative LightPAFF examples (GPT-2-style decoder, BART-style seq2seq) are real
2-worker Ray Train + DeepSpeed ZeRO-2 pipelines (a teacher trained from scratch,
pre-training distillation, a fine-tuned teacher, fine-tuning distillation); their tests
also check that every stage's loss drops, that the export reloads with the Auto LM classes
to the trained model's logits, the report (perplexity / BLEU / tokens per second),
sequence-level KD's cached generations, and a resume in the middle of the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from distill.cluster.run_files import PROBE_FILE
from distill.core.export import PROBE_TEXTS, load_encoder
from distill.core.generative import probe_logits
from distill.core.lstm_student import BiLSTMModel
from distill.core.spec_loading import load_spec, override_fields
from distill.core.stages import expand_stages, smoke_pipeline_planned
from distill.jobs.run import prepare_run, run_job

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
# The generative LightPAFF examples run with --smoke and more checks in their own tests below;
# sweep files (`distill tune`) are checked in tests/unit/cluster/test_sweep_spec.py.
GENERATIVE = {"lightpaff_gpt2.yaml", "lightpaff_seq2seq.yaml"}
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").glob("*.yaml")
    if p.name not in GENERATIVE and not p.stem.startswith("sweep_")
)
# Examples whose path through the system another example already runs end to end in the
# default suite: their runs are slow-tier; every example still passes preflight in the
# default suite (`test_every_example_passes_preflight`).
COVERED_ELSEWHERE = {
    "sts_small": pytest.mark.slow(
        reason="a 1-2 min Ray run of sts_l3's recipe at other sizes (activation importance is "
        "unit-tested); its preflight runs in the default suite"
    ),
    "minilm": pytest.mark.slow(
        reason="a 1 min Ray run of attention_kl + value_relation_kl, which minilm_assistant's "
        "first stage runs; its preflight runs in the default suite"
    ),
    "minilmv2": pytest.mark.slow(
        reason="a 1 min Ray run of minilmv2_relations, which minilm_assistant's second stage "
        "runs; its preflight runs in the default suite"
    ),
    "lightpaff_bert": pytest.mark.slow(
        reason="a 2 min Ray run of a task pipeline with a fine-tuned teacher, which "
        "ernie_tiny's four stages run; its preflight runs in the default suite"
    ),
    "sst2_sts": pytest.mark.slow(
        reason="a 1 min Ray run of hidden_mse + pooled_cosine on SST-2, which sts_l3 and "
        "mixkd_sst2 run between them; its preflight runs in the default suite"
    ),
}


def _example_param(path: Path):
    slow = COVERED_ELSEWHERE.get(path.stem)
    return pytest.param(path, id=path.stem, marks=() if slow is None else slow)


FAST_EVAL = [
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
    "evaluation.max_sts_pairs=64",
    "evaluation.latency=none",  # the ONNX serving export is checked by test_e2e_quickstart
    "scaling.num_workers=2",
    "training.steps=6",  # 6 steps show the loss terms as well
]


def smoke_example(example: Path, overrides: list[str]):
    """`distill run EXAMPLE --smoke --set OVERRIDES`: smoke caps what the example sets and
    keeps what the test sets with `--set`."""
    spec = load_spec(example, overrides)
    return smoke_pipeline_planned(spec, override_fields(overrides))[0]


def _needs_task_data(raw: dict) -> bool:
    return "task" in raw or any("task" in stage for stage in raw.get("stages", []))


# Per-example training settings applied after --smoke: the BiLSTM job evaluates twice, to
# see its held-out loss fall.
AFTER_SMOKE = {"bert_to_lstm": {"steps": 8, "eval_every": 4}}


def _smoke_overrides(example: Path) -> list[str]:
    raw = yaml.safe_load(example.read_text())
    # Every stage 6 steps too (each stage sets its own length, which smoke keeps).
    overrides = FAST_EVAL + [
        f"stages.{i}.training.steps=6" for i in range(len(raw.get("stages", [])))
    ]
    if not (SHARED / "sst2" / "train.tsv").is_file():
        if _needs_task_data(raw):
            pytest.skip(f"{example.name} needs labelled SST-2 from ../shared/data (absent)")
        overrides += [
            "data.train.path=builtin:docstrings",
            "data.text_columns=null",
            "evaluation.sts_path=null",
        ]
    return overrides


ALL_EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml") if not p.stem.startswith("sweep_")
)


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=[p.stem for p in ALL_EXAMPLES])
def test_every_example_passes_preflight(tmp_path, monkeypatch, example):
    """Without Ray: every check `distill run EXAMPLE --smoke` makes before it starts (the
    spec, each stage's teacher, student and data, the run folder)."""
    monkeypatch.chdir(ROOT)
    spec = smoke_example(example, _smoke_overrides(example))
    prepared = prepare_run(spec, str(tmp_path / example.stem))
    assert [s.name for s in prepared.stages] == [s.name for s in expand_stages(spec)]


@pytest.mark.parametrize("example", [_example_param(p) for p in EXAMPLES])
def test_example_runs_with_smoke(ray_session, tmp_path, monkeypatch, example):
    monkeypatch.chdir(ROOT)  # examples name data relative to the repo root
    spec = smoke_example(example, _smoke_overrides(example))
    if example.stem in AFTER_SMOKE:
        training = spec.training.model_copy(update=AFTER_SMOKE[example.stem])
        spec = spec.model_copy(update={"training": training})
    report = run_job(spec, str(tmp_path / example.stem))

    assert report["run"]["status"] == "completed"
    stages = expand_stages(spec)
    assert [s["name"] for s in report["stages"]] == [s.name for s in stages]
    last = json.loads((tmp_path / example.stem / "metrics.jsonl").read_text().splitlines()[-1])
    for name, weight in stages[-1].spec.objective.weights.items():
        if weight > 0:
            assert f"loss_{name}" in last, name  # every loss of the last stage was computed
    assert report["export_check"]["max_abs_diff"] < 1e-4
    assert report["teacher_check"]["unchanged"] is True
    if spec.student.kind == "lstm":
        _check_bilstm(tmp_path / example.stem, report)


def _check_bilstm(run_dir: Path, report: dict) -> None:
    """BERT -> BiLSTM: the export is the BiLSTM with its projection to the teacher's width,
    and the held-out loss (the sentence vector's distance to the teacher's) falls."""
    encoder = load_encoder(run_dir / "student")
    assert isinstance(encoder.model, BiLSTMModel) and encoder.projection is not None
    assert report["student"]["kind"] == "lstm"
    assert report["training"]["final_eval_loss"] < report["training"]["first_eval_loss"]


# --- generative LightPAFF examples ------------------------------------------------------------

GENERATIVE_FAST = [
    "evaluation.throughput_texts=8",
    "evaluation.throughput_rounds=1",
    "evaluation.generation_length=8",
    "evaluation.batch_size=8",
    "data.max_eval_samples=16",
]


def _stage_history(run_dir: Path, stage: str) -> list[dict]:
    lines = (run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _smoke(example: str, extra: list[str]):
    # 8 steps per stage: enough to see the loss drop.
    overrides = GENERATIVE_FAST + [f"stages.{i}.training.steps=8" for i in range(4)]
    overrides += [f"stages.{i}.training.learning_rate=0.002" for i in range(4)]
    overrides += extra  # last: a test's own setting (e.g. more steps to resume) wins
    return smoke_example(ROOT / "examples" / example, overrides)


def _final_probe(run_dir: Path, stage: str) -> torch.Tensor:
    done = json.loads((run_dir / "stages" / stage / "done.json").read_text())
    return torch.load(Path(done["checkpoint"]) / PROBE_FILE)


def _held_out_kl(teacher_dir: Path, student_dir: Path, texts: list[str]) -> float:
    """Mean token KL(teacher || student) of the two exported models on held-out texts
    (seq2seq: each text as source and teacher-forced target)."""
    from distill.core.teacher import load_teacher
    from distill.core.token_losses import token_kd

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    mask = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    (teacher, _), (student, _) = load_teacher(str(teacher_dir)), load_teacher(str(student_dir))
    return float(
        token_kd(
            probe_logits(student, tokenizer, texts, 64),
            probe_logits(teacher, tokenizer, texts, 64),
            mask["attention_mask"],
        )
    )


def _stage_model(run_dir: Path, stage: str) -> Path:
    """The export an earlier stage left for later ones (they all ran in one worker group)."""
    done = json.loads((run_dir / "stages" / stage / "done.json").read_text())
    return run_dir / done["student"]


def _check_pipeline(run_dir: Path, report: dict, stages: list[str], auto) -> None:
    assert [s["name"] for s in report["stages"]] == stages
    # The teachers (trained from scratch, then on the task data) learn: the loss drops.
    for stage in ("teacher_lm", "teacher_ft"):
        history = _stage_history(run_dir, stage)
        assert history[-1]["loss"] < history[0]["loss"], (stage, history)
    # Fine-tuning distillation starts from pretrain_kd's student and brings it closer to
    # the fine-tuned teacher on held-out text.
    texts = [
        "Return the number of items in the sequence.",
        "Raise an error if the file does not exist.",
        "a warm and funny film about growing up",
        "Create a new socket using the given address family.",
    ]
    before = _held_out_kl(
        _stage_model(run_dir, "teacher_ft"), _stage_model(run_dir, "pretrain_kd"), texts
    )
    after = _held_out_kl(_stage_model(run_dir, "teacher_ft"), run_dir / "student", texts)
    assert after < before, (before, after)
    assert report["teacher_check"]["unchanged"] is True
    # The export reloads with the Auto LM class to exactly the trained model's logits.
    student = auto.from_pretrained(run_dir / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "student")
    expected = _final_probe(run_dir, stages[-1])
    torch.testing.assert_close(
        probe_logits(student, tokenizer, PROBE_TEXTS, 64), expected, atol=1e-5, rtol=0
    )
    assert report["export_check"]["max_abs_diff"] < 1e-5
    assert report["size"]["student_parameters"] < report["size"]["teacher_parameters"] / 1.5
    q = report["quality"]
    assert q["metric"] == "perplexity" and q["teacher"] > 1 and q["student"] > 1
    assert report["speed"]["unit"] == "tokens/s" and report["speed"]["student"] > 0
    assert report["speed"]["teacher"] > 0


def test_lightpaff_gpt2_pipeline_distils_exports_and_resumes_mid_way(
    ray_session, tmp_path, monkeypatch
):
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
    assert {"loss_lm", "loss_lm_kl"} <= set(last)
    # Resume mid-pipeline: finished stages are skipped (their exports untouched), the last
    # continues from its step 8.
    finished = {
        s: (_stage_model(run_dir, s) / "config.json").stat().st_mtime_ns for s in stages[:3]
    }
    first = _stage_history(run_dir, "finetune_kd")
    resumed = run_job(
        _smoke("lightpaff_gpt2.yaml", extra + ["stages.3.training.steps=12"]), str(run_dir)
    )
    for stage, written in finished.items():
        assert (_stage_model(run_dir, stage) / "config.json").stat().st_mtime_ns == written
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
    assert {"loss_lm", "loss_lm_kl"} <= set(_stage_history(run_dir, "finetune_kd")[-1])
    assert {"loss_lm", "loss_lm_jsd"} <= set(_stage_history(run_dir, "pretrain_kd")[-1])
