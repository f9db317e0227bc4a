"""`absolute_paths` (distill_core/named_files.py, used by preflight) (through `JobSpec.map_paths`): local paths that exist become
absolute, in the job and in its stages; hub names and `builtin:` names are left alone."""

from __future__ import annotations

from distill.core.named_files import absolute_paths
from distill.core.spec_loading import load_spec_dict


def test_existing_local_paths_become_absolute_and_names_stay(tmp_path, monkeypatch):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "a.csv").write_text("text\nx\n")
    (tmp_path / "sts.csv").write_text("")
    monkeypatch.chdir(tmp_path)
    spec = load_spec_dict(
        {
            "teacher": {"name": "./teacher"},
            "data": {
                "train": [{"path": "a.csv"}, {"path": "glue"}, {"path": "builtin:docstrings"}]
            },
            "evaluation": {"sts_path": "sts.csv"},
            "stages": [
                {"name": "ft", "teacher": {"name": "bert-base-uncased"}},
                {
                    "name": "kd",
                    "teacher": {"name": "stage:ft"},
                    "data": {"train": {"path": "a.csv"}},
                },
            ],
        }
    )
    done = absolute_paths(spec)
    assert done.teacher.name == str(tmp_path / "teacher")
    assert [s.path for s in done.data.train] == [
        str(tmp_path / "a.csv"),
        "glue",
        "builtin:docstrings",
    ]
    assert done.evaluation.sts_path == str(tmp_path / "sts.csv")
    assert done.stages[0].teacher == {"name": "bert-base-uncased"}
    assert done.stages[1].teacher == {"name": "stage:ft"}
    assert done.stages[1].data == {"train": {"path": str(tmp_path / "a.csv")}}


def test_a_home_path_is_expanded_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("x\n")
    spec = load_spec_dict({"data": {"train": {"path": "~/corpus.txt"}}})
    assert absolute_paths(spec).data.train[0].path == str(tmp_path / "corpus.txt")
    missing = load_spec_dict({"data": {"train": {"path": "~/nope.txt"}}})
    assert absolute_paths(missing) is missing
