"""Staging a submitted job: relative local files copied into the working dir with the paths
rewritten, others left alone; the `distill` package staged as one folder; the runtime_env."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import yaml

import distill
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec_dict
from distill.jobs import staging
from distill.jobs.staging import (
    bundle_local_paths,
    new_working_dir,
    parse_env,
    runtime_env,
    stage_code,
)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A user's folder: a data file, an STS file and a teacher folder, named relatively."""
    work = tmp_path / "work"
    (work / "teacher" / "__pycache__").mkdir(parents=True)
    (work / "teacher" / "config.json").write_text("{}")
    (work / "teacher" / "__pycache__" / "x.pyc").write_text("")
    (work / "data").mkdir()
    (work / "data" / "texts.txt").write_text("one\ntwo\n")
    (work / "sts.csv").write_text("pairs")
    monkeypatch.chdir(work)
    return work


def test_relative_local_files_are_copied_and_the_paths_rewritten(work, tmp_path):
    raw = {
        "teacher": {"name": "./teacher"},
        "data": {"train": [{"path": "data/texts.txt"}, {"path": "glue/sst2"}]},
        "evaluation": {"sts_path": "sts.csv"},
        "stages": [{"name": "kd", "data": {"train": {"path": "data/texts.txt"}}}],
    }
    working_dir = new_working_dir(tmp_path / "staging")
    staged = bundle_local_paths(raw, working_dir, work)

    assert staged["teacher"]["name"] == "job/files/0_teacher"
    assert staged["data"]["train"] == [{"path": "job/files/1_texts.txt"}, {"path": "glue/sst2"}]
    assert staged["evaluation"]["sts_path"] == "job/files/2_sts.csv"
    # A file named twice is copied once; the stage names the same copy.
    assert staged["stages"][0]["data"]["train"] == {"path": "job/files/1_texts.txt"}
    files = sorted(p.name for p in (working_dir / "job" / "files").iterdir())
    assert files == ["0_teacher", "1_texts.txt", "2_sts.csv"]
    assert (working_dir / "job/files/1_texts.txt").read_text() == "one\ntwo\n"
    assert (working_dir / "job/files/0_teacher/config.json").is_file()
    assert not (working_dir / "job/files/0_teacher/__pycache__").exists()
    assert raw["teacher"]["name"] == "./teacher"  # the caller's mapping is untouched
    # As the cluster sees it: the staged config validates from the working dir.
    spec = load_spec_dict(yaml.safe_load(yaml.safe_dump(staged)))
    assert (working_dir / spec.evaluation.sts_path).read_text() == "pairs"
    assert (working_dir / "job" / ".distill-job").is_file()  # how a node finds its copy


def test_absolute_home_hub_and_builtin_names_are_not_bundled(work, tmp_path):
    raw = {
        "teacher": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
        "data": {
            "train": [
                {"path": str(work / "sts.csv")},
                {"path": "~/corpus.txt"},
                {"path": "builtin:docstrings"},
                {"path": "s3://bucket/a.csv"},
            ]
        },
    }
    working_dir = new_working_dir(tmp_path / "staging")
    assert bundle_local_paths(raw, working_dir, work) == raw
    assert not (working_dir / "job" / "files").exists()


def test_too_large_a_bundle_is_one_line_naming_the_field(work, tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "BUNDLE_LIMIT_BYTES", 4)
    raw = {"evaluation": {"sts_path": "sts.csv"}}
    with pytest.raises(SpecError, match=r"^sts_path: local files named by the config exceed"):
        bundle_local_paths(raw, new_working_dir(tmp_path / "staging"), work)


def test_the_code_is_staged_as_one_distill_package(tmp_path):
    package = stage_code(tmp_path / "code")
    assert package == tmp_path / "code" / "distill"
    assert (package / "__init__.py").read_bytes() == Path(distill.__file__).read_bytes()
    for name in staging.CODE_SUBPACKAGES:
        source = Path(importlib.import_module(f"distill.{name}").__file__).parent
        assert sorted(p.name for p in (package / name).glob("*.py")) == sorted(
            p.name for p in source.glob("*.py")
        )
    assert (package / "core" / "spec.py").is_file() and (package / "jobs" / "cli.py").is_file()
    assert not list(package.rglob("__pycache__"))
    assert sorted(p.name for p in package.iterdir()) == ["__init__.py", "cluster", "core", "jobs"]


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"env": [], "pip": [], "code": "local", **kw})


def test_runtime_env_ships_the_working_dir_the_code_and_no_secret(tmp_path):
    working_dir = new_working_dir(tmp_path)
    renv = runtime_env(working_dir, {"OMP_NUM_THREADS": "1"}, _args(env=["A=b"], pip=["x==1"]))
    assert renv["working_dir"] == str(working_dir)
    assert renv["py_modules"] == [str(tmp_path / "code" / "distill")]
    assert renv["env_vars"] == {"OMP_NUM_THREADS": "1", "DISTILL_SUBMITTED_JOB": "1", "A": "b"}
    assert renv["pip"] == ["x==1"]
    installed = runtime_env(new_working_dir(tmp_path / "other"), {}, _args(code="installed"))
    assert "py_modules" not in installed and "pip" not in installed
    with pytest.raises(SpecError, match="--env AWS_SECRET_ACCESS_KEY: looks like a secret"):
        parse_env(["AWS_SECRET_ACCESS_KEY=abc"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_env(["NOVALUE"])
