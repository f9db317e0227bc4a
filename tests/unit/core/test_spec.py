"""Job spec: defaults, YAML plus overrides, one-line errors naming the field, smoke, redaction."""

from __future__ import annotations

import pytest
import yaml

from distill.core.smoke import apply_smoke, smoke, smoke_plan
from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import (
    dump_spec,
    explicit_fields,
    load_spec,
    parse_overrides,
    parse_yaml_mapping,
    redacted,
)
from distill.core.teacher import PACKAGED_TEACHER


def test_defaults():
    spec = load_spec()  # the quickstart: the defaults, scored on the packaged STS sample
    assert spec == JobSpec(evaluation={"sts_path": "builtin:sts-sample"})
    assert JobSpec().evaluation.sts_path is None  # a config without it: cosine agreement
    assert spec.teacher.name == PACKAGED_TEACHER
    assert spec.student.layers == 3 and spec.student.hidden is None
    assert spec.objective.weights is None  # the teacher family's default, set by preflight
    assert spec.deepspeed.zero_stage == 2
    assert spec.data.train[0].path == "builtin:docstrings"


def test_yaml_file_and_overrides_merge(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "student: {layers: 2, hidden: 192, heads: 6}\n"
        "training: {steps: 50, learning_rate: 0.001}\n"
        "data: {train: {path: corpus.csv, format: csv}}\n"
    )
    spec = load_spec(
        path,
        [
            "student.layers=4",
            "student.teacher_layers=[0, 1, 3, 5]",
            "deepspeed.offload_optimizer=true",
            "training.epochs=1.5",
            "training.steps=",
            "data.train.split=validation",
            "objective.weights={pooled_mse: 2}",
        ],
    )
    # Overrides win; sibling keys from the file survive the nested merge.
    assert (spec.student.layers, spec.student.hidden, spec.student.heads) == (4, 192, 6)
    assert spec.student.teacher_layers == [0, 1, 3, 5]
    assert spec.deepspeed.offload_optimizer is True
    assert spec.training.epochs == 1.5 and spec.training.steps is None
    assert spec.training.learning_rate == 0.001
    assert (spec.data.train[0].path, spec.data.train[0].format, spec.data.train[0].split) == (
        "corpus.csv",
        "csv",
        "validation",
    )
    assert spec.objective.weights == {"pooled_mse": 2.0}


def test_parse_overrides_types_values_as_yaml():
    assert parse_overrides(["a.b=3", "a.c=0.5", "a.d=no", "e=[1, x]", "f=null", "g=hi"]) == {
        "a": {"b": 3, "c": 0.5, "d": False},
        "e": [1, "x"],
        "f": None,
        "g": "hi",
    }


@pytest.mark.parametrize("pairs", [["novalue"], ["=3"], ["a=1", "a.b=2"]])
def test_bad_override_syntax(pairs):
    with pytest.raises(SpecError, match="--set"):
        parse_overrides(pairs)


@pytest.mark.parametrize(
    ("overrides", "field", "detail"),
    [
        (["student.layerz=3"], "student.layerz", "unknown field"),
        (["training.steps=abc"], "training.steps", "valid integer"),
        (["deepspeed.zero_stage=5"], "deepspeed.zero_stage", "got 5"),
        (["scaling.num_workers=0"], "scaling.num_workers", "greater than 0"),
        (["data.eval_fraction=0.7"], "data.eval_fraction", "less than 0.5"),
        (["student.teacher_layers=[0, x]"], "student.teacher_layers.1", "valid integer"),
        (["output.name=bad name!"], "output.name", "pattern"),
        (
            ["student.init=uniform_map", "student.importance=activations"],
            "student.importance",
            "activations ranks what init: width_slice keeps; init is uniform_map",
        ),
        (["student.importance=gradients"], "student.importance", "'weights' or 'activations'"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(overrides, field, detail):
    with pytest.raises(SpecError) as err:
        load_spec(None, overrides)
    message = str(err.value)
    assert message.startswith(f"{field}: ") and detail in message
    assert "\n" not in message


def test_heads_must_divide_hidden():
    with pytest.raises(SpecError) as err:
        load_spec(None, ["student.hidden=30", "student.heads=4"])
    message = str(err.value)
    assert message.startswith("student.heads:") and "student.hidden 30" in message


def test_numeric_looking_string_override_is_kept_as_text():
    assert load_spec(None, ["output.name=2024"]).output.name == "2024"


@pytest.mark.parametrize(
    ("text", "detail"),
    [("student: [unclosed\n", "invalid YAML"), ("- a\n- b\n", "expected a mapping")],
)
def test_bad_config_files(tmp_path, text, detail):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=detail) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


# --- smoke ---------------------------------------------------------------------


def test_smoke_shrinks_what_the_user_left_unset():
    spec = load_spec()
    small = smoke(spec)
    assert small.training.steps == 20 and small.training.epochs is None
    assert small.training.checkpoint_every == 10 and small.training.warmup_steps == 2
    assert small.data.max_train_samples == 2000 and small.data.max_eval_samples == 64
    assert small.evaluation.throughput_texts == 64 and small.evaluation.throughput_rounds == 1
    assert spec.training.steps == 100  # the original is not modified


def test_smoke_never_overrides_a_field_set_in_the_yaml_or_with_set(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("training: {checkpoint_every: 100}\ndata: {max_train_samples: 100000}\n")
    spec = load_spec(path, ["training.steps=50", "evaluation.throughput_texts=4096"])
    plan = smoke_plan(spec, explicit_fields(spec))
    small = apply_smoke(spec, plan)
    assert (small.training.steps, small.training.checkpoint_every) == (50, 100)
    assert small.data.max_train_samples == 100000
    assert small.evaluation.throughput_texts == 4096
    # What the user did not set is still shrunk, and the note says which is which.
    assert (small.training.eval_every, small.data.max_eval_samples) == (10, 64)
    note = plan.describe()
    assert "training.eval_every 50 -> 10" in note and "\n" not in note
    assert "kept as set: " in note and "training.steps=50" in note
    assert "training.checkpoint_every=100" in note


def test_smoke_treats_steps_and_epochs_as_one_setting():
    by_epochs = smoke(load_spec(None, ["training.epochs=3"]), {"training.epochs"})
    assert (by_epochs.training.steps, by_epochs.training.epochs) == (100, 3)
    by_steps = smoke(load_spec(None, ["training.steps=5"]), {"training.steps"})
    assert (by_steps.training.steps, by_steps.training.epochs) == (5, None)
    capped = smoke(load_spec(None, ["training.epochs=3"]))  # from a config file: capped
    assert (capped.training.steps, capped.training.epochs) == (20, None)


def test_explicit_fields_come_from_the_yaml_and_overrides_only():
    spec = load_spec(None, ["training.steps=5", "objective.weights={kd: 1.0}"])
    quickstart = {"evaluation", "evaluation.sts_path"}  # what load_spec(None) sets
    assert explicit_fields(spec) == quickstart | {
        "training",
        "training.steps",
        "objective",
        "objective.weights",
        "objective.weights.kd",
    }
    assert explicit_fields(load_spec()) == quickstart


# --- redaction and the written config ------------------------------------------


def test_redacted_drops_secret_looking_keys_at_any_depth():
    tree = {
        "name": "run",
        "storage": {
            "endpoint": "http://localhost:9000",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "nested": {"token": "t", "RAY_AUTH_TOKEN": "t", "region": "eu", "token_kl": 1.0},
        },
        "users": [{"password": "p", "user": "u"}],
        "session_key": "k",
        "credentials_file": "~/.aws/credentials",
    }
    assert redacted(tree) == {
        "name": "run",
        # a loss named token_... is not a secret; a key ending in token is
        "storage": {
            "endpoint": "http://localhost:9000",
            "nested": {"region": "eu", "token_kl": 1.0},
        },
        "users": [{"user": "u"}],
    }
    assert tree["storage"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"  # input untouched


def test_dump_spec_round_trips():
    spec = load_spec(None, ["student.layers=2", "objective.layer_map=[2, 6]"])
    text = dump_spec(spec)
    assert JobSpec.model_validate(yaml.safe_load(text)) == spec
    assert "secret" not in text and "token" not in text


def test_data_train_takes_one_source_or_a_list():
    spec = load_spec(None, ["data.train=[{path: a.tsv}, {path: b.csv, format: sts}]"])
    assert [s.path for s in spec.data.train_sources] == ["a.tsv", "b.csv"]
    assert load_spec().data.train_sources[0].path == "builtin:docstrings"
    with pytest.raises(SpecError, match=r"^data\.train\.1\.format: got 'nope'"):
        load_spec(None, ["data.train=[{path: a.tsv}, {path: b.csv, format: nope}]"])
    with pytest.raises(SpecError, match=r"^data\.train: "):
        load_spec(None, ["data.train=[]"])


def test_an_override_that_is_not_yaml_names_the_key():
    with pytest.raises(
        SpecError, match=r"^--set objective.weights: '\{logit_kl:' is not a YAML value"
    ):
        parse_overrides(["objective.weights={logit_kl:"])


# --- S3 connection settings ------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("not-a-url", "http:// or https://"),
        ("ftp://host:21", "http:// or https://"),
        ("http://", "no host"),
        ("http://:9000", "no host"),
        ("http://host:notaport", "not a valid URL"),
        ("http://host:70000", "not a valid URL"),
        ("http://[::1", "not a valid URL"),
    ],
)
def test_s3_endpoint_must_be_an_http_url(url, expected):
    with pytest.raises(SpecError, match=r"^output\.s3\.endpoint_url: ") as err:
        load_spec(None, [f"output.s3.endpoint_url={url}"])
    assert expected in str(err.value)


def test_s3_endpoint_and_region_that_are_fine():
    spec = load_spec(
        None, ["output.s3.endpoint_url=http://minio:9000", "output.s3.region=eu-west-1"]
    )
    assert spec.output.s3.endpoint_url == "http://minio:9000"
    assert (
        load_spec(None, ["output.s3.endpoint_url=https://s3.example.com"]).output.s3.region is None
    )
    with pytest.raises(SpecError, match=r"^output\.s3\.region: "):
        load_spec(None, ["output.s3.region=not a region!"])


def test_a_folder_given_as_the_config_file_is_named_a_folder(tmp_path):
    with pytest.raises(SpecError, match=r"^config .*: is a folder, expected a YAML file$"):
        load_spec(tmp_path)


def test_teacher_cache_mode_off_survives_yaml_booleans():
    assert load_spec(None, ["teacher.cache.mode=off"]).teacher.cache.mode == "off"
    with pytest.raises(SpecError, match="teacher.cache.mode"):
        load_spec(None, ["teacher.cache.mode=on"])


def test_a_key_written_twice_in_one_mapping_is_one_line_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("training:\n  steps: 1\n  batch_size: 8\n  steps: 2\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value) == (
        f"config {path}: key 'steps' appears twice in one mapping (lines 2 and 4)"
    )


def test_merge_keys_may_be_overridden_and_equal_keys_in_different_mappings_are_fine():
    text = (
        "base: &b {steps: 1}\ntraining: {<<: *b, steps: 2}\nlist: [{x: 1}, {x: 2}]\n1: a\n'1': b\n"
    )
    raw = parse_yaml_mapping(text, "config t.yaml")
    assert raw["training"] == {"steps": 2} and raw[1] == "a" and raw["1"] == "b"
