"""Integration: a short distillation of a tiny random teacher of each model type through the
real job path (`run_job`: preflight, Ray Train with 2 workers, DeepSpeed ZeRO-2, export,
report), sharing one Ray session. Every type's job runs under the `slow` marker:
`helpers.family_zoo.REPRESENTATIVE`, the types whose job would also run by default, is empty,
because in the default run every model type already trains in process in the unit tier
(tests/unit/core/test_model_type_coverage.py) and the examples run BERT, GPT-2 and BART jobs.

Each checks that the training loss falls, the export reloads with the family's Auto class
as the teacher's architecture, its tokenizer gives the teacher's token ids, and the
reloaded export reproduces the trained student's outputs (the report's export check).
"""

from __future__ import annotations

import json

import pytest
from helpers.family_zoo import AUTO, MODEL_TYPES, REPRESENTATIVE, family_name, save_teacher
from transformers import AutoTokenizer

from distill.core.packaged_teacher import packaged_teacher_path
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

SHORT = [
    "student.layers=2",
    "student.hidden=16",
    "student.init=uniform_map",
    "training.steps=8",
    "training.batch_size=8",
    "training.log_every=2",
    "training.eval_every=8",
    "training.checkpoint_every=8",
    "training.warmup_steps=1",
    "training.learning_rate=1e-2",  # random tiny teachers: a few steps must show it
    "data.max_length=32",
    "data.max_train_samples=200",
    "data.max_eval_samples=16",
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
    "evaluation.generation_length=4",
]
SLOW_JOB = pytest.mark.slow(
    reason=(
        "a 2-worker Ray Train job (preflight, ZeRO-2, export, report) per model type; the unit "
        "tier trains every type in process (tests/unit/core/test_model_type_coverage.py)"
    )
)
TYPES = [
    pytest.param(t, marks=() if t in REPRESENTATIVE else SLOW_JOB) for t in sorted(MODEL_TYPES)
]


@pytest.fixture(scope="module")
def bert_tokenizer():
    """The packaged teacher's WordPiece tokenizer (30,522 tokens): real words for encoders."""
    return AutoTokenizer.from_pretrained(packaged_teacher_path())


@pytest.mark.parametrize("model_type", TYPES)
def test_model_type_distils_through_the_job(ray_session, model_type, bert_tokenizer, tmp_path):
    teacher = save_teacher(model_type, tmp_path / "teacher", bert_tokenizer)
    run_dir = tmp_path / "run"
    report = run_job(load_spec(None, [f"teacher.name={teacher}", *SHORT]), str(run_dir))

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert history[-1]["loss"] < history[0]["loss"], history
    assert report["teacher"]["family"] == family_name(model_type)
    assert report["export_check"]["max_abs_diff"] < 1e-4

    auto = AUTO[family_name(model_type)]
    exported = auto.from_pretrained(run_dir / "student")
    original = auto.from_pretrained(teacher)
    assert type(exported) is type(original)
    assert exported.config.model_type == model_type
    text = ["the student keeps the teacher's tokenizer"]
    t_ids = AutoTokenizer.from_pretrained(teacher)(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(run_dir / "student")(text)["input_ids"] == t_ids


@pytest.mark.slow(
    reason=(
        "a Ray Train job for each cache mode (about 20 s each); the tokenizer pairing is "
        "unit-tested in tests/unit/core/test_cross_tokenizer.py"
    )
)
@pytest.mark.parametrize("cache", ["off", "auto"])
def test_pretrained_student_with_its_own_tokenizer_distils_through_the_job(
    ray_session, bert_tokenizer, tmp_path, cache
):
    """A BERT-vocabulary teacher into a pretrained DistilBERT-type student with a byte-level
    BPE tokenizer: each model tokenizes the text itself, the pooled objectives train (from
    the live teacher, or from the teacher-output cache of the teacher's tokenization), and
    the export carries the student's tokenizer."""
    from helpers.family_zoo import lm_tokenizer

    teacher = save_teacher("bert", tmp_path / "teacher", bert_tokenizer)
    student = save_teacher("distilbert", tmp_path / "student", lm_tokenizer("gpt2"), seed=1)
    run_dir = tmp_path / "run"
    overrides = [s for s in SHORT if not s.startswith("student.")]
    spec = load_spec(
        None,
        [f"teacher.name={teacher}", "student.init=pretrained", f"student.name={student}"]
        + [f"teacher.cache.mode={cache}"]
        + overrides,
    )
    report = run_job(spec, str(run_dir))
    assert report["teacher_cache"]["used"] is (cache == "auto"), report["teacher_cache"]

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"], history
    assert {"loss_pooled_mse", "loss_pooled_cosine"} <= set(history[-1])
    assert report["export_check"]["max_abs_diff"] < 1e-4
    text = ["each model tokenizes the text itself"]
    exported = AutoTokenizer.from_pretrained(run_dir / "student")(text)["input_ids"]
    assert exported == AutoTokenizer.from_pretrained(student)(text)["input_ids"]
    assert exported != bert_tokenizer(text)["input_ids"]


@pytest.mark.slow(
    reason=(
        "a Ray Train job of about 30 s; batches, alignment and the LM + ULD loss are "
        "unit-tested in tests/unit/core/test_cross_tokenizer.py"
    )
)
def test_causal_student_with_its_own_tokenizer_distils_through_the_job(
    ray_session, bert_tokenizer, tmp_path
):
    """A GPT-2 teacher on the packaged byte-level BPE (2,048 tokens) into a pretrained
    Llama-type student on BERT's lower-cased WordPiece (30,522 tokens): each model reads its
    own token ids, the default objective across tokenizers (LM loss + ULD) trains, the
    report scores both per character, and the export carries the student's tokenizer."""
    from helpers.family_zoo import build_teacher

    teacher = save_teacher("gpt2", tmp_path / "teacher", bert_tokenizer)
    student = tmp_path / "student"
    build_teacher("llama", bert_tokenizer, seed=1).save_pretrained(student)
    bert_tokenizer.save_pretrained(student)
    run_dir = tmp_path / "run"
    overrides = [s for s in SHORT if not s.startswith("student.")]
    spec = load_spec(
        None,
        [f"teacher.name={teacher}", "student.init=pretrained", f"student.name={student}"]
        + overrides,
    )
    report = run_job(spec, str(run_dir))

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"], history
    assert history[-1]["loss_uld"] < history[0]["loss_uld"], history
    assert {"loss_lm", "loss_uld"} <= set(history[-1])
    assert report["quality"]["metric"] == "char_perplexity"
    assert report["export_check"]["max_abs_diff"] < 1e-4
    exported = AUTO["causal"].from_pretrained(run_dir / "student")
    assert exported.config.model_type == "llama"
    text = ["each model tokenizes the text itself"]
    ids = AutoTokenizer.from_pretrained(run_dir / "student")(text)["input_ids"]
    assert ids == bert_tokenizer(text)["input_ids"]
    assert ids != AutoTokenizer.from_pretrained(teacher)(text)["input_ids"]
