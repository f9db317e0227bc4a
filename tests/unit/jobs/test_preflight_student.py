"""Preflight of a pretrained student (`student.init: pretrained`, `student.name`): its folder
is checked like a teacher's (exists, weights, tokenizer) in one line before Ray, and a
student whose tokenizer differs from the teacher's gets the sentence-level default."""

from __future__ import annotations

import pytest
from helpers.family_zoo import build_teacher, lm_tokenizer
from transformers import AutoTokenizer

from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.jobs.preflight import preflight


@pytest.fixture
def bpe_student(tmp_path):
    tokenizer = lm_tokenizer("gpt2")
    folder = tmp_path / "student"
    build_teacher("distilbert", tokenizer, seed=5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _wordpiece(teacher_dir):
    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"the cat sat on mat number {i}" for i in range(200)) + "\n")
    return path


def _preflight_with_student(teacher_dir, corpus, student, *more: str):
    """Preflight of a stage distilling `teacher_dir` on `corpus` into the pretrained
    student folder `student` (`more`: further overrides)."""
    overrides = [
        f"teacher.name={teacher_dir}",
        f"data.train.path={corpus}",
        "student.init=pretrained",
        f"student.name={student}",
        *more,
    ]
    return preflight(load_spec(None, overrides))


def test_preflight_resolves_a_cross_tokenizer_student(teacher_dir, bpe_student, corpus):
    spec = _preflight_with_student(teacher_dir, corpus, bpe_student, "data.max_length=32")
    assert spec.objective.weights == {"pooled_mse": 1.0, "pooled_cosine": 1.0}


def test_preflight_refuses_a_student_folder_without_tokenizer(teacher_dir, corpus, tmp_path):
    folder = tmp_path / "bare"
    build_teacher("bert", _wordpiece(teacher_dir)).save_pretrained(folder)
    with pytest.raises(SpecError, match=r"^student.name: .*bare: no tokenizer") as err:
        _preflight_with_student(teacher_dir, corpus, folder)
    assert "\n" not in str(err.value)


def test_preflight_refuses_a_missing_student_folder(teacher_dir, corpus, tmp_path):
    with pytest.raises(SpecError, match=r"^student.name: folder .*/nowhere does not exist"):
        _preflight_with_student(teacher_dir, corpus, tmp_path / "nowhere")
