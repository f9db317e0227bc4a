"""Run folders read without trusting them: a damaged report.json or config.yaml is one line
naming the file, `runs list` lists a damaged run as damaged and the others as usual, and
`export` checks where it writes before writing anything."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers.reports import GOOD_REPORT

from distill.core.spec import SpecError
from distill.core.spec_loading import dump_spec, load_spec
from distill.jobs.report import format_table
from distill.jobs.run_folder import REPORT_SHAPE, DamagedFile, read_run_report, shape_problem
from distill.jobs.runs import export_run, format_runs, list_runs


def _run(root: Path, name: str, report: str | None = None, config: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config if config is not None else dump_spec(load_spec()))
    if report is not None:
        (folder / "report.json").write_text(report)
    return folder


def _without(section: str) -> str:
    report = copy.deepcopy(GOOD_REPORT)
    del report[section]
    return json.dumps(report)


def test_the_reference_report_formats():
    assert "cosine_agreement (10)" in format_table(GOOD_REPORT)
    assert shape_problem(GOOD_REPORT, REPORT_SHAPE) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"schema_version": 1, "run": {', "not valid JSON at line 1 column 31 (truncated?)"),
        ("", "empty file"),
        ("[1, 2]", "expected a JSON object, got list"),
        (_without("quality"), "not a complete distill report (missing section 'quality')"),
        (
            json.dumps(
                {**GOOD_REPORT, "size": {**GOOD_REPORT["size"], "student_parameters": "many"}}
            ),
            "not a complete distill report (size.student_parameters: expected an integer or "
            'a number, got "many")',
        ),
    ],
)
def test_a_damaged_report_is_one_line_naming_the_file(tmp_path, content, reason):
    run = _run(tmp_path, "r", report=content)
    with pytest.raises(DamagedFile) as err:
        read_run_report(str(run))
    assert str(err.value) == f"{run}/report.json: {reason}"


def test_a_report_that_is_a_folder(tmp_path):
    run = _run(tmp_path, "r")
    (run / "report.json").mkdir()
    with pytest.raises(DamagedFile, match=r"report\.json: is a folder, expected a file$"):
        read_run_report(str(run))


def test_a_report_whose_values_do_not_fit_the_table(tmp_path):
    run = _run(tmp_path, "r")
    report = {**GOOD_REPORT, "size": {**GOOD_REPORT["size"], "teacher_parameters": 0}}
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(DamagedFile, match=r"report\.json: not a readable distill report \(Zero"):
        read_run_report(str(run)).formatted(format_table)


def test_runs_list_lists_a_damaged_run_as_damaged_and_the_others_as_usual(tmp_path):
    _run(tmp_path, "good", report=json.dumps(GOOD_REPORT))
    _run(tmp_path, "truncated", report='{"run": {"name"')
    _run(tmp_path, "badconfig", config="student: [\n")
    rows = {r["name"]: r for r in list_runs(str(tmp_path))}
    assert rows["good"]["status"] == "completed" and rows["good"]["steps"] == 20
    assert rows["good"]["quality"] == "cosine_agreement 0.8 (0.8 of teacher)"
    assert rows["truncated"]["status"] == "damaged"
    assert rows["truncated"]["reason"].startswith("report.json: not valid JSON")
    assert rows["badconfig"]["status"] == "damaged"
    assert rows["badconfig"]["reason"].startswith("config.yaml: invalid YAML")
    table = format_runs(list(rows.values()))
    assert "truncated: damaged: report.json: not valid JSON" in table


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_runs_list_of_a_missing_folder_or_a_file_is_an_error(tmp_path, kind):
    location = tmp_path / "runs"
    if kind == "file":
        location.write_text("not a folder\n")
    expected = "is a file, not a folder" if kind == "file" else "no such folder"
    with pytest.raises(SpecError, match=rf"^runs list: {location}: {expected}$"):
        list_runs(str(location))


def test_export_refuses_an_out_path_under_a_file_before_writing(tmp_path):
    run = _run(tmp_path, "r")
    (run / "student").mkdir()
    (run / "student" / "config.json").write_text("{}")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(SpecError, match=rf"^--out: cannot create .*: {blocker} is a file"):
        export_run(str(run), blocker / "deeper" / "out")
    with pytest.raises(SpecError, match=rf"^--out: {blocker} is a file, expected a folder$"):
        export_run(str(run), blocker)


def test_export_of_a_run_with_a_broken_config_names_it_before_writing(tmp_path):
    run = _run(tmp_path, "r", config="student: [\n")
    checkpoint = run / "train" / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE.json").write_text(json.dumps({"files": {}, "step": 5}))
    out = tmp_path / "out"
    with pytest.raises(SpecError, match=r"config\.yaml: invalid YAML"):
        export_run(str(run), out)
    assert not out.exists()
