"""`distill run` / `distill report` on bad input: exit code 2 and one stderr line
`distill: error: <field or file>: <what was expected>`, before Ray takes any resource.

Each case runs the real CLI in a subprocess (`python -m distill.jobs.cli ...`) in its own folder,
with `RAY_ADDRESS` removed and `RAY_TMPDIR` pointed at a folder that must never appear:
Ray creates it as soon as `ray.init` starts a local instance. A subprocess spends ~6 s
importing torch, transformers, datasets and scipy, so the `outcomes` fixture runs all
selected cases two at a time once per module and the tests only read the results.

    python -m pytest tests/test_cli.py -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distill.core.spec import dump_spec, load_spec

ERROR_PREFIX = "distill: error: "
# The default run folder, relative to the case folder (output.dir/output.name).
DEFAULT_RUN = "runs/quickstart"
# An existing run whose student differs from the default one: `--output prev` must be refused.
PREVIOUS_RUN = {"prev/config.yaml": dump_spec(load_spec(None, ["student.layers=2"]))}


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # after `python -m distill.jobs.cli`; "{dir}" is the case folder
    field: str  # must appear before the first ": " of the message
    mentions: str = ""  # must appear somewhere in the message
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into the case folder
    run_folder: str = DEFAULT_RUN


def run_args(*overrides: str, output: str | None = None) -> tuple[str, ...]:
    return ("run", "--set", *overrides, *(("--output", output) if output else ()))


CASES: dict[str, Case] = {
    "unknown-field": Case(run_args("foo=1"), "foo", "unknown field"),
    "wrong-type": Case(run_args("training.steps=abc"), "training.steps", "integer"),
    "bad-literal": Case(run_args("deepspeed.zero_stage=5"), "deepspeed.zero_stage", "5"),
    "heads-do-not-divide-hidden": Case(
        run_args("student.hidden=384", "student.heads=5"), "student.heads", "384"
    ),
    "missing-config-file": Case(("run", "missing.yaml"), "missing.yaml", "not found"),
    "invalid-yaml-config": Case(
        ("run", "bad.yaml"), "bad.yaml", "YAML", files={"bad.yaml": "student: {layers: 2\n - [\n"}
    ),
    "set-without-equals": Case(("run", "--set", "foo"), "--set", "key=value"),
    "missing-data-file": Case(
        run_args("data.train.path={dir}/nope.csv"), "data.train", "{dir}/nope.csv: not found"
    ),
    "missing-text-column": Case(
        run_args("data.train.path=ab.csv", "data.text_columns=[zzz]"),
        "data.train",
        "zzz",
        files={"ab.csv": "a,b\nhello,world\nfoo,bar\n"},
    ),
    "empty-csv": Case(
        run_args("data.train.path=header_only.csv"),
        "data.train",
        "header_only.csv",
        files={"header_only.csv": "text\n"},
    ),
    "blank-txt": Case(
        run_args("data.train.path=blank.txt"),
        "data.train",
        "blank.txt",
        files={"blank.txt": "\n\n   \n\n"},
    ),
    "missing-sts-file": Case(
        run_args("evaluation.sts_path=nope.tsv"), "evaluation.sts_path", "nope.tsv"
    ),
    "missing-teacher-folder": Case(
        run_args("teacher.name=./no_such_teacher"), "teacher.name", "no_such_teacher"
    ),
    "more-workers-than-cpus": Case(
        run_args(f"scaling.num_workers={(os.cpu_count() or 1) + 1}"), "scaling.num_workers", "CPUs"
    ),
    "fp16-on-cpu": Case(run_args("deepspeed.precision=fp16"), "deepspeed.precision", "fp16"),
    "every-other-layer-too-deep": Case(
        run_args("student.layers=5"), "student.init", "every_other_layer"
    ),
    "resume-with-other-student": Case(
        run_args("student.layers=3", output="prev"),
        "student",
        "existing run",
        files=PREVIOUS_RUN,
        run_folder="prev",
    ),
    "report-of-missing-run": Case(("report", "nothere"), "report", "nothere/report.json"),
    # distill tune: the sweep file and every combination of its space are checked first.
    "tune-missing-sweep": Case(("tune", "nope.yaml"), "sweep nope.yaml", "not found"),
    "tune-two-kinds-in-one-dimension": Case(
        ("tune", "s.yaml"),
        "space.student.layers",
        "exactly one",
        files={"s.yaml": "space:\n  student.layers: {grid: [1], choice: [2]}\n"},
    ),
    "tune-combination-never-valid": Case(
        ("tune", "s.yaml"),
        "space",
        "1 of 2 combinations can never run, e.g. student.hidden=200",
        files={"s.yaml": "space:\n  student.hidden: {grid: [384, 200]}\n"},
    ),
    "tune-grid-under-optuna": Case(
        ("tune", "s.yaml"),
        "space.student.layers",
        "use choice",
        files={"s.yaml": "search: {algorithm: optuna}\nspace:\n  student.layers: {grid: [1]}\n"},
    ),
    "tune-bad-max-params": Case(
        ("tune", "s.yaml", "--max-params", "-5"),
        "--max-params",
        "positive",
        files={"s.yaml": "space:\n  student.layers: {grid: [1]}\n"},
    ),
}

# Bad input found by these tests after the first version (each was a traceback or got past
# preflight). `field` is left empty: any wording that names the input (`mentions`) counts.
GAPS: dict[str, tuple[Case, str]] = {
    "config-not-utf8": (
        Case(("run", "latin1.yaml"), "", "latin1.yaml", files={"latin1.yaml": b"student: \xff\n"}),
        "UnicodeDecodeError traceback, exit 1: jobs/spec.py:181 catches only yaml.YAMLError",
    ),
    "output-under-a-file": (
        Case(
            run_args("student.layers=2", output="afile/run"),
            "",
            "afile/run",
            files={"afile": "not a folder\n"},
            run_folder="afile/run",
        ),
        "NotADirectoryError traceback, exit 1: jobs/run.py:52 writes config.yaml unguarded",
    ),
    "existing-run-config-unreadable": (
        Case(
            run_args("student.layers=2", output="prev"),
            "",
            "config.yaml",
            files={"prev/config.yaml": "student: [\n"},
            run_folder="prev",
        ),
        "yaml ParserError traceback, exit 1: jobs/run.py:34 parses the old config unguarded",
    ),
    # Preflight accepts these two, so `--output prev` (another student) is what stops them
    # before Ray: today the resume check's `student: differs` is the (wrong) message.
    "max-length-beyond-teacher-positions": (
        Case(
            run_args("data.max_length=1000", output="prev"),
            "",
            "data.max_length",
            files=PREVIOUS_RUN,
            run_folder="prev",
        ),
        "accepted by jobs/preflight.py; the teacher (512 positions) fails on a Ray worker",
    ),
    "sts-file-without-sts-rows": (
        Case(
            run_args("evaluation.sts_path=pairs.tsv", output="prev"),
            "",
            "evaluation.sts_path",
            files={**PREVIOUS_RUN, "pairs.tsv": "not\tan\tsts\tfile\n"},
            run_folder="prev",
        ),
        "jobs/preflight.py checks only that the file exists; load_sts_pairs raises ValueError "
        "in jobs/report.py after training",
    ),
}


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    folder: Path  # the case's working directory
    before: dict[str, bytes]  # its files before the run

    @property
    def error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def ray_tmp_dir(folder: Path) -> Path:
    """The case's `RAY_TMPDIR`: beside the case folder, so the snapshot does not see it."""
    return folder.parent / f"{folder.name}.ray"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def cli_env(ray_tmp: Path, hf_cache: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
    }
    env.update(
        RAY_TMPDIR=str(ray_tmp),
        HF_DATASETS_CACHE=str(hf_cache),  # fresh cache: the same work (and output) every time
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


def _run_case(case: Case, folder: Path, hf_cache: Path) -> Outcome:
    folder.mkdir(parents=True)
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    before = _snapshot(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", *(a.format(dir=folder) for a in case.args)],
        cwd=folder,
        env=cli_env(ray_tmp_dir(folder), hf_cache),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, folder, before)


def _all_cases() -> dict[str, Case]:
    return {**CASES, **{name: case for name, (case, _) in GAPS.items()}}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every case some selected test of this module needs, two subprocesses at a time."""
    wanted = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    root = tmp_path_factory.mktemp("cli")
    cases = {name: case for name, case in _all_cases().items() if name in wanted}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_run_case, case, root / name, root / "hf-cache")
            for name, case in cases.items()
        }
        return {name: future.result() for name, future in futures.items()}


def check_rejected(case: Case, out: Outcome) -> None:
    """Exit 2; the last stderr line is the error, naming the field or file first."""
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    line = out.error_line
    assert line.startswith(ERROR_PREFIX), line
    assert [ln for ln in out.stderr.splitlines() if ln.startswith(ERROR_PREFIX)] == [line]
    named, sep, expected = line.removeprefix(ERROR_PREFIX).partition(": ")
    assert sep and expected.strip(), f"no '<field>: <expected>' in {line!r}"
    assert case.field.format(dir=out.folder) in named, line
    assert case.mentions.format(dir=out.folder) in line, line


def check_no_ray(case: Case, out: Outcome) -> None:
    """Ray printed nothing, created no session folder, and the run folder got no train/."""
    text = out.stdout + out.stderr
    assert "Started a local Ray instance" not in text
    assert "Ray" not in text, text[-2000:]
    assert not ray_tmp_dir(out.folder).exists(), "ray.init ran"
    assert not (out.folder / case.run_folder / "train").exists()
    # Rejected input writes nothing: no run folder, no resolved config over an old run's.
    assert _snapshot(out.folder) == out.before


def check_one_line(out: Outcome) -> None:
    assert out.stderr.strip().splitlines() == [out.error_line], out.stderr[-2000:]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_naming_the_field(name, outcomes):
    check_rejected(CASES[name], outcomes[name])


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_rejected_before_ray(name, outcomes):
    check_no_ray(CASES[name], outcomes[name])


@pytest.mark.parametrize("name", CASES)
def test_stderr_is_exactly_the_error_line(name, outcomes):
    check_one_line(outcomes[name])


@pytest.mark.parametrize("name", GAPS)
def test_more_bad_inputs_exit_2_in_one_line(name, outcomes):
    case, out = GAPS[name][0], outcomes[name]
    check_rejected(case, out)
    check_no_ray(case, out)
    check_one_line(out)


def test_ray_tmpdir_sentinel_sees_a_ray_start(tmp_path):
    """Control for `check_no_ray`: `ray.init` does create the `RAY_TMPDIR` folder (it may
    then fail on the long AF_UNIX socket path under pytest's tmp_path; either way is fine)."""
    sentinel = tmp_path / "ray"
    code = "import ray\ntry:\n    ray.init(num_cpus=1)\nexcept OSError:\n    pass\nray.shutdown()\n"
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(sentinel, tmp_path / "hf-cache"),
        capture_output=True,
        timeout=120,
    )
    assert sentinel.is_dir()
