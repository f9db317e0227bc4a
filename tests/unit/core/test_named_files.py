"""`check_named_files`: the data, STS and teacher paths a spec names, checked before the
CLI's heavy imports, in the words preflight uses for the same problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distill.core.named_files import check_named_files
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.stages import expand_stages
from distill.jobs.preflight import preflight


def _error(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as err:
        check_named_files(expand_stages(load_spec(None, overrides)))
    return str(err.value)


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text("text\nhello there\nanother row\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "model.txt").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["data.train.path=nope.csv"], "data.train: data file nope.csv: not found"),
        (
            ["data.train.path=empty.csv"],
            "data.train: data file {dir}/empty.csv: empty file (0 bytes)",
        ),
        (
            ["data.train.path=folder.csv"],
            "data.train: data file {dir}/folder.csv: is a folder, expected a file",
        ),
        (
            ["data.train=[{path: ok.csv}, {path: gone.jsonl}]"],
            "data.train.1: data file gone.jsonl: not found",
        ),
        (["data.eval={path: gone.tsv}"], "data.eval: data file gone.tsv: not found"),
        (["evaluation.sts_path=nope.tsv"], "evaluation.sts_path: file nope.tsv not found"),
        (
            ["evaluation.sts_path=folder.csv"],
            "evaluation.sts_path: {dir}/folder.csv is a folder, expected an STS file",
        ),
        (["teacher.name=./no_teacher"], "teacher.name: folder ./no_teacher does not exist"),
        (
            ["teacher.name=./model.txt"],
            "teacher.name: folder {dir}/model.txt is a file, expected a model folder",
        ),
        (
            ["stages=[{name: a}, {name: b, data: {train: {path: missing.txt}}}]"],
            "stages.1 (b): data.train: data file missing.txt: not found",
        ),
    ],
)
def test_a_missing_or_unusable_path_is_one_line_naming_its_field(files, overrides, line):
    assert _error(overrides) == line.format(dir=files)


def test_hub_names_builtins_and_existing_files_pass(files):
    for overrides in (
        [],  # the quickstart: builtin corpus, builtin STS sample, packaged teacher
        ["data.train.path=ok.csv", "evaluation.sts_path=builtin:sts-sample"],
        ["data.train.path=someone/some-dataset"],  # a hub id: the hub's to answer
        ["teacher.name=someone/some-model"],
    ):
        check_named_files(expand_stages(load_spec(None, overrides)))


@pytest.mark.parametrize(
    "overrides",
    [["data.train.path=nope.csv"], ["evaluation.sts_path=nope.tsv"], ["teacher.name=./no_teacher"]],
)
def test_preflight_words_the_same_problem_the_same_way(files, overrides):
    spec = load_spec(None, overrides)
    with pytest.raises(SpecError) as err:
        preflight(spec)
    assert str(err.value) == _error(overrides)


def test_the_check_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from distill.core.named_files import check_named_files\n"
        "from distill.core.spec_loading import load_spec\n"
        "from distill.core.stages import expand_stages\n"
        "check_named_files(expand_stages(load_spec(None, [])))\n"
        "print(','.join(m for m in ('torch', 'datasets', 'transformers', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
