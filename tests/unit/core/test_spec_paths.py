"""The spec's local-path fields, declared once (`PATH_FIELDS`): every one is found, in the job
and in each stage's sections, on a `JobSpec` and on the raw YAML mapping alike; names that
are never local paths (`builtin:`, `stage:`, `s3://`, the packaged teacher) are not."""

from __future__ import annotations

import copy

from distill.core.spec import JobSpec, map_spec_paths
from distill.core.spec_loading import load_spec_dict
from distill.core.teacher import PACKAGED_TEACHER

RAW = {
    "teacher": {"name": "./teacher"},
    "data": {
        "train": [{"path": "a.csv"}, {"path": "glue", "format": "hub"}],
        "eval": {"path": "held_out.jsonl"},
    },
    "evaluation": {"sts_path": "sts/dev.csv"},
    "stages": [
        {"name": "ft", "kind": "finetune", "teacher": {"name": "../big"}},
        {
            "name": "kd",
            "teacher": {"name": "stage:ft"},
            "data": {"train": {"path": "stage.txt"}, "eval": {"path": "stage_eval.txt"}},
        },
        {"name": "more", "data": {"train": [{"path": "x.txt"}, {"path": "builtin:docstrings"}]}},
    ],
}
FOUND = [
    ("teacher.name", "./teacher"),
    ("data.train.0.path", "a.csv"),
    ("data.train.1.path", "glue"),  # a hub name by its format, but maybe a local folder too
    ("data.eval.path", "held_out.jsonl"),
    ("evaluation.sts_path", "sts/dev.csv"),
    ("stages.0.teacher.name", "../big"),
    ("stages.1.data.train.path", "stage.txt"),  # one source, not a list, as YAML allows
    ("stages.1.data.eval.path", "stage_eval.txt"),
    ("stages.2.data.train.0.path", "x.txt"),
]


def _recorder():
    seen: list[tuple[str, str]] = []

    def fn(value: str, field: str) -> str:
        seen.append((field, value))
        return f"/mnt/{value}"

    return seen, fn


def test_every_path_field_of_a_raw_spec_is_found_in_job_then_stage_order():
    seen, fn = _recorder()
    raw = copy.deepcopy(RAW)
    mapped = map_spec_paths(raw, fn)
    assert seen == FOUND
    assert raw == RAW  # the input is left as it was
    assert mapped["teacher"] == {"name": "/mnt/./teacher"}
    assert mapped["data"]["train"][1] == {"path": "/mnt/glue", "format": "hub"}
    assert mapped["stages"][1]["teacher"] == {"name": "stage:ft"}
    assert mapped["stages"][1]["data"]["train"] == {"path": "/mnt/stage.txt"}
    assert mapped["stages"][2]["data"]["train"][1] == {"path": "builtin:docstrings"}
    # Only path values change: every other key and value is carried over.
    assert mapped["stages"][0]["kind"] == "finetune" and mapped["stages"][2]["name"] == "more"
    assert list(mapped) == list(RAW)


def test_a_job_spec_maps_the_same_fields_and_stays_valid():
    seen, fn = _recorder()
    spec = load_spec_dict(copy.deepcopy(RAW))
    mapped = spec.map_paths(fn)
    assert seen == FOUND
    assert isinstance(mapped, JobSpec) and spec.teacher.name == "./teacher"
    assert mapped.teacher.name == "/mnt/./teacher"
    assert [s.path for s in mapped.data.train] == ["/mnt/a.csv", "/mnt/glue"]
    assert mapped.data.train[1].format == "hub"
    assert mapped.data.eval.path == "/mnt/held_out.jsonl"
    assert mapped.evaluation.sts_path == "/mnt/sts/dev.csv"
    assert mapped.stages[0].teacher == {"name": "/mnt/../big"}
    assert mapped.stages[2].data["train"][0] == {"path": "/mnt/x.txt"}
    assert JobSpec.model_validate(mapped.model_dump()) == mapped


def test_names_that_are_never_local_paths_are_not_passed_on():
    seen, fn = _recorder()
    spec = load_spec_dict(
        {
            "teacher": {"name": "builtin:tiny-gpt2"},
            "data": {"train": [{"path": "builtin:docstrings"}, {"path": "s3://bucket/a.csv"}]},
            "stages": [{"name": "a"}, {"name": "b", "teacher": {"name": "stage:a"}}],
        }
    )
    assert spec.map_paths(fn) == spec and seen == []
    defaults = JobSpec()
    assert defaults.teacher.name == PACKAGED_TEACHER
    assert defaults.map_paths(fn) is defaults and seen == []


def test_an_identity_map_returns_the_spec_itself():
    spec = load_spec_dict(copy.deepcopy(RAW))
    assert spec.map_paths(lambda value, field: value) is spec
    raw = copy.deepcopy(RAW)
    assert map_spec_paths(raw, lambda value, field: value) is raw
