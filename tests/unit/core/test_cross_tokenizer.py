"""Teacher and student with different tokenizers (`student.init: pretrained` with
`student.name`): each model tokenizes the text itself; sentence-level encoder objectives
(pooled vectors through a projection) train across tokenizers; token-aligned objectives,
MixKD and generative KD are refused in one line; a pretrained student of the same
tokenizer takes every objective. Preflight checks the student folder like a teacher's."""

from __future__ import annotations

import datasets
import pytest
import torch
from helpers.family_zoo import build_teacher, lm_tokenizer, save_teacher
from transformers import AutoTokenizer

from distill.core.data import (
    collate_for_both,
    teacher_view,
    tokenize_for_both,
    tokenizers_differ,
)
from distill.core.export import PROBE_TEXTS, load_encoder
from distill.core.families import FAMILIES
from distill.core.spec import SpecError, load_spec

TEXTS = ["the cat sat on the mat", "a good movie and a great story", "it was a dark night"]


@pytest.fixture
def bpe_student(tmp_path):
    """A pretrained DistilBERT-type student (hidden 32 -> 16 via its own config) with a
    byte-level BPE tokenizer of 2,048 tokens: a different model type and vocabulary."""
    tokenizer = lm_tokenizer("gpt2")
    model = build_teacher("distilbert", tokenizer, seed=5)
    folder = tmp_path / "student"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _resolve(teacher_dir, tiny_bert, overrides, cross=True):
    spec = load_spec(None, [f"teacher.name={teacher_dir}", *overrides])
    return FAMILIES["encoder"].resolve_stage(
        spec,
        "distill",
        tiny_bert.config,
        teacher_has_weights=True,
        teacher_has_head=False,
        cross_tokenizer=cross,
    )


def test_batches_carry_each_models_own_token_ids(tiny_tokenizer):
    bpe = lm_tokenizer("gpt2")
    assert tokenizers_differ(bpe, tiny_tokenizer) and not tokenizers_differ(bpe, bpe)
    rows = tokenize_for_both(
        datasets.Dataset.from_dict({"text": TEXTS}), bpe, 32, teacher_tokenizer=tiny_tokenizer
    )
    batch = collate_for_both(bpe, tiny_tokenizer)(list(rows))
    own = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    theirs = bpe(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch["teacher_input_ids"], own["input_ids"])
    assert torch.equal(batch["input_ids"], theirs["input_ids"])
    view = teacher_view(batch)
    assert torch.equal(view["input_ids"], own["input_ids"])
    assert torch.equal(view["attention_mask"], own["attention_mask"])
    plain = {"input_ids": own["input_ids"], "attention_mask": own["attention_mask"]}
    assert teacher_view(plain) is plain


def test_sentence_objectives_train_across_tokenizers_and_export_the_students_tokenizer(
    teacher_dir, tiny_bert, tiny_tokenizer, bpe_student, tmp_path
):
    spec = _resolve(
        teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={bpe_student}"]
    )
    assert spec.objective.weights == {"pooled_mse": 1.0, "pooled_cosine": 1.0}  # the default
    assert (spec.student.layers, spec.student.hidden) == (4, 32)  # the student's own shape
    family = FAMILIES["encoder"]
    student_tok = AutoTokenizer.from_pretrained(bpe_student)
    model = family.trainable(spec, tiny_bert, student_tok).eval()
    assert type(model.student).__name__ == "DistilBertModel"
    tokenize, collate = family.batch_functions(student_tok, tiny_tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), student_tok, 32)
    batch = collate(list(rows))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss, parts = model(batch, family.teacher_outputs(model, tiny_bert, None, batch))
        assert set(parts) == {"pooled_mse", "pooled_cosine"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    out = tmp_path / "export"
    probe = family.export(model, student_tok, out, max_length=32, st_teacher=None)
    exported = load_encoder(out)
    ids = exported.tokenizer(TEXTS)["input_ids"]  # its own tokenizer, not the teacher's
    assert ids == student_tok(TEXTS)["input_ids"] != tiny_tokenizer(TEXTS)["input_ids"]
    assert torch.allclose(exported.encode(PROBE_TEXTS, max_length=32), probe, atol=1e-5)


def test_pretrained_student_must_be_of_the_teachers_family(teacher_dir, tiny_bert, tmp_path):
    tokenizer = lm_tokenizer("gpt2")
    narrow = build_teacher("llama", tokenizer)  # a decoder cannot be an encoder's student
    folder = tmp_path / "decoder"
    narrow.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(SpecError, match=r"^student.name: .* is a causal model \(llama\)"):
        _resolve(teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={folder}"])

    small = save_teacher("bert", tmp_path / "small", tokenizer)  # 4 x 32, BPE vocabulary
    spec = _resolve(teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={small}"])
    model = FAMILIES["encoder"].trainable(spec, tiny_bert, tokenizer)
    assert "pooled" not in model.objective.projections  # same width: none needed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.weights={hidden_mse: 1}"], r"^objective.weights: \['hidden_mse'\] compare"),
        (["objective.weights={minilmv2_relations: 1}"], r"^objective.weights: \['minilmv2_"),
        (
            ["objective.weights={pooled_mse: 1}", "objective.mixup={alpha: 0.4}"],
            r"^objective.mixup",
        ),
        (["student.hidden=16"], r"^student.hidden: a pretrained student keeps its own shape"),
    ],
)
def test_token_aligned_objectives_are_refused_across_tokenizers(
    teacher_dir, tiny_bert, bpe_student, overrides, message
):
    with pytest.raises(SpecError, match=message) as err:
        _resolve(
            teacher_dir,
            tiny_bert,
            ["student.init=pretrained", f"student.name={bpe_student}", *overrides],
        )
    assert "\n" not in str(err.value)


def test_same_tokenizer_pretrained_student_takes_token_objectives(teacher_dir, tiny_bert, tmp_path):
    folder = tmp_path / "same"
    build_teacher("distilbert", _wordpiece(teacher_dir)).save_pretrained(folder)
    _wordpiece(teacher_dir).save_pretrained(folder)
    spec = _resolve(
        teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={folder}"], cross=False
    )
    assert spec.objective.weights == {"hidden_mse": 1.0, "pooled_cosine": 1.0}


def _wordpiece(teacher_dir):
    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.init=pretrained"], r"^student.name: student.init: pretrained needs"),
        (["student.name=/somewhere"], r"^student.name: only with student.init: pretrained"),
    ],
)
def test_pretrained_needs_a_name_and_a_name_needs_pretrained(
    teacher_dir, tiny_bert, overrides, message
):
    with pytest.raises(SpecError, match=message):
        _resolve(teacher_dir, tiny_bert, overrides, cross=False)


def test_generative_student_with_another_tokenizer_is_refused(tiny_tokenizer, tmp_path):
    teacher = save_teacher("llama", tmp_path / "llama", tiny_tokenizer)
    other = tmp_path / "other"
    model = build_teacher("qwen2", tiny_tokenizer)  # a causal LM on the 99-word WordPiece
    model.save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    config = build_teacher("llama", lm_tokenizer("llama")).config
    spec = load_spec(
        None, [f"teacher.name={teacher}", "student.init=pretrained", f"student.name={other}"]
    )
    with pytest.raises(SpecError, match=r"^student.name: the student's tokenizer .* differs"):
        FAMILIES["causal"].resolve_stage(
            spec, "distill", config, teacher_has_weights=True, teacher_has_head=False,
            cross_tokenizer=True,
        )  # fmt: skip


def test_generative_student_of_another_model_type_sharing_the_vocabulary(tmp_path):
    """A Llama teacher into a pretrained Qwen2 student with the same tokenizer: token KD."""
    tokenizer = lm_tokenizer("llama")
    teacher = build_teacher("llama", tokenizer, seed=1)
    student_dir = tmp_path / "qwen2"
    build_teacher("qwen2", tokenizer, seed=2).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    spec = load_spec(
        None, ["teacher.name=unused", "student.init=pretrained", f"student.name={student_dir}"]
    )
    family = FAMILIES["causal"]
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    assert spec.objective.weights == {"lm_kl": 1.0, "lm": 1.0}
    model = family.trainable(spec, teacher, tokenizer)
    assert type(model.student).__name__ == "Qwen2ForCausalLM"
    assert family.output_config(spec, "distill", teacher.config).model_type == "qwen2"
