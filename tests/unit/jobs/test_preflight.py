"""Preflight: the resolved spec that reaches the Ray workers (paths, widths, steps)."""

from __future__ import annotations

import os

import pytest

from distill.core.spec import SpecError, load_spec
from distill.jobs.preflight import preflight


@pytest.fixture
def teacher_dir(tmp_path, tiny_bert, tiny_tokenizer):
    folder = tmp_path / "teacher"
    tiny_bert.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"the cat sat on mat number {i}" for i in range(200)) + "\n")
    return path


def test_relative_paths_become_absolute_for_the_workers(tmp_path, teacher_dir, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = preflight(
        load_spec(
            None, ["teacher.name=./teacher", "data.train.path=corpus.txt", "student.layers=2"]
        )
    )
    assert spec.teacher.name == str(teacher_dir)
    assert spec.data.train[0].path == str(corpus) and os.path.isabs(spec.data.train[0].path)


def test_student_width_and_freezing_are_resolved_from_the_teacher(teacher_dir, corpus):
    spec = preflight(
        load_spec(
            None, [f"teacher.name={teacher_dir}", f"data.train.path={corpus}", "student.layers=2"]
        )
    )
    assert (spec.student.hidden, spec.student.heads, spec.student.ffn) == (32, 4, 64)
    assert spec.student.freeze_word_embeddings is True  # copied at full width

    narrow = preflight(
        load_spec(
            None,
            [
                f"teacher.name={teacher_dir}",
                f"data.train.path={corpus}",
                "student.layers=2",
                "student.hidden=16",
            ],
        )
    )
    # Head size is kept (8), the ffn ratio too, and narrower embeddings must train.
    assert (narrow.student.heads, narrow.student.ffn, narrow.student.freeze_word_embeddings) == (
        2,
        32,
        False,
    )


def test_epochs_become_steps(teacher_dir, corpus):
    spec = preflight(
        load_spec(
            None,
            [
                f"teacher.name={teacher_dir}",
                f"data.train.path={corpus}",
                "student.layers=2",
                "training.epochs=2",
                "training.batch_size=10",
            ],
        )
    )
    # 200 rows, 5% held out -> 190 training rows; 2 workers x 10 per step -> 9 steps per epoch.
    assert spec.training.epochs is None and spec.training.steps == 19


def test_too_little_data_for_one_step_is_refused(teacher_dir, tmp_path):
    """Defaults: 2 workers x batch 16 = 32 rows per step."""
    small = tmp_path / "small.txt"
    small.write_text("".join(f"the cat sat {i}\n" for i in range(30)))  # 28 train rows < 2 x 16
    with pytest.raises(SpecError, match=r"^data.train: .*fewer than one step"):
        preflight(
            load_spec(
                None,
                [f"teacher.name={teacher_dir}", f"data.train.path={small}", "student.layers=2"],
            )
        )


def test_held_out_split_needs_a_row_per_worker(teacher_dir, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("the cat\nthe mat\nthe dog\n")
    with pytest.raises(SpecError, match=r"^data.eval: .*at least one per worker"):
        preflight(
            load_spec(
                None, [f"teacher.name={teacher_dir}", f"data.train.path={tiny}", "student.layers=2"]
            )
        )
