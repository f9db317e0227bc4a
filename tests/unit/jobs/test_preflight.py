"""Preflight: the resolved spec that reaches the Ray workers (paths, widths, steps)."""

from __future__ import annotations

import os

import pytest

from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.jobs.preflight import preflight


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


def test_a_teacher_folder_without_weights_is_refused_before_ray(teacher_dir, corpus):
    (teacher_dir / "model.safetensors").unlink()
    with pytest.raises(SpecError, match=r"^teacher\.name: .*teacher: no weights \(expected one"):
        preflight(load_spec(None, [f"teacher.name={teacher_dir}", f"data.train.path={corpus}"]))


def test_a_checkpoint_tensor_of_the_wrong_shape_is_refused_naming_the_file(teacher_dir, corpus):
    import json

    config = json.loads((teacher_dir / "config.json").read_text())
    config["intermediate_size"] += 8  # the weights were saved with the old FFN width
    (teacher_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpecError) as err:
        preflight(
            load_spec(
                None,
                [f"teacher.name={teacher_dir}", f"data.train.path={corpus}", "student.layers=2"],
            )
        )
    message = str(err.value)
    assert message.startswith(f"teacher.name: {teacher_dir / 'model.safetensors'}: ")
    assert "intermediate.dense.weight has shape" in message and "\n" not in message


def test_a_teacher_folder_without_a_tokenizer_is_refused(teacher_dir, corpus):
    for name in ("tokenizer.json", "vocab.txt"):
        (teacher_dir / name).unlink(missing_ok=True)
    with pytest.raises(SpecError, match=r"^teacher\.name: .*teacher: no tokenizer"):
        preflight(load_spec(None, [f"teacher.name={teacher_dir}", f"data.train.path={corpus}"]))


def test_a_hub_teacher_while_the_hub_is_unreachable_fails_at_once(monkeypatch, corpus):
    import distill.core.teacher as teacher

    monkeypatch.setattr(teacher, "hub_reachable", lambda: False)
    with pytest.raises(SpecError) as err:
        preflight(load_spec(None, ["teacher.name=nosuchorg/nosuchmodel"]))
    assert str(err.value) == (
        "teacher.name: 'nosuchorg/nosuchmodel' is not a local path and not in the local cache, "
        "and the Hugging Face hub (https://huggingface.co) cannot be reached"
    )


def test_a_data_seed_out_of_range_is_a_spec_error_naming_training_seed():
    with pytest.raises(SpecError, match=r"^training\.seed: "):
        load_spec(None, ["training.seed=-1"])


def test_an_sts_file_with_a_bad_score_deep_inside_is_refused_up_front(
    teacher_dir, corpus, tmp_path
):
    sts = tmp_path / "sts.tsv"
    rows = [f"g\tf\t2012\t{i}\t{i % 5}.0\ta cat {i}\tthe mat {i}" for i in range(100)]
    rows[90] = "g\tf\t2012\t90\tnan\ta\tb"
    sts.write_text("\n".join(rows) + "\n")
    overrides = [f"teacher.name={teacher_dir}", f"data.train.path={corpus}", "student.layers=2"]
    with pytest.raises(SpecError, match=r"^evaluation\.sts_path: .*line 91: score 'nan'"):
        preflight(load_spec(None, [*overrides, f"evaluation.sts_path={sts}"]))


def test_an_unreachable_ray_address_is_one_line_before_ray(monkeypatch):
    """With RAY_ADDRESS set, preflight reads the cluster's worker memory; nothing listening
    there is one line naming RAY_ADDRESS (Ray itself would retry for minutes)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(SpecError) as err:
        preflight(load_spec(None, ["training.steps=2"]))
    message = str(err.value)
    assert message.startswith(f"RAY_ADDRESS: cannot reach a Ray cluster at 127.0.0.1:{port}")
    assert "\n" not in message


def test_cache_actors_beyond_this_machine_are_refused_naming_the_field(teacher_dir, corpus):
    cpus = os.cpu_count()
    spec = load_spec(
        None,
        [
            f"teacher.name={teacher_dir}",
            f"data.train.path={corpus}",
            "student.layers=2",
            f"teacher.inference.actors={cpus}",
            "teacher.inference.cpus_per_actor=2",
        ],
    )
    with pytest.raises(SpecError) as err:
        preflight(spec)
    assert str(err.value) == (
        f"teacher.inference.actors: {cpus} actors x 2 CPUs needs {2 * cpus} CPUs, "
        f"this machine has {cpus}"
    )


def test_a_cache_actor_gpu_without_a_gpu_is_refused_before_ray(teacher_dir, corpus, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spec = load_spec(
        None,
        [
            f"teacher.name={teacher_dir}",
            f"data.train.path={corpus}",
            "student.layers=2",
            "teacher.inference.gpus_per_actor=1",
        ],
    )
    with pytest.raises(SpecError, match=r"^teacher.inference.gpus_per_actor: > 0 but no GPU"):
        preflight(spec)
