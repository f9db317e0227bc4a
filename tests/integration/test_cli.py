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

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers.reports import GOOD_REPORT
from safetensors.torch import save as safetensors_save

from distill.core.spec_loading import dump_spec, load_spec
from distill.core.teacher import PACKAGED_TEACHER, resolve_teacher

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
    line: str = ""  # when given: the exact message after "distill: error: " ("{dir}" as above)
    env: dict[str, str | None] = field(default_factory=dict)  # None: removed from the env


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

# -- issue 17: a tester's bad inputs, each now one exact line -------------------------------

_TEACHER = Path(resolve_teacher(PACKAGED_TEACHER))
TEACHER_CONFIG = (_TEACHER / "config.json").read_text()
TOKENIZER = (_TEACHER / "tokenizer.json").read_text()
TINY_WEIGHTS = safetensors_save({"w": torch.zeros(1)})  # a valid header: enough for preflight
# A hub that answers nothing (users do not set HF_HUB_OFFLINE; the tests' env does).
NO_HUB = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}
UNREACHABLE = "http://127.0.0.1:9"
RUN_CONFIG = {"r/config.yaml": dump_spec(load_spec())}
STOPPED_RUN = {  # a run with a complete checkpoint but no export: export must consolidate
    "r/config.yaml": "student: [\n",
    "r/train/checkpoint_2026-01-01_00-00-00.000000/COMPLETE.json": '{"files": {}, "step": 5}',
}
NO_WEIGHTS = "no weights (expected one of model.safetensors, model.safetensors.index.json, "
NO_WEIGHTS += "pytorch_model.bin, pytorch_model.bin.index.json)"
NO_TOKENIZER = "no tokenizer (expected one of tokenizer.json, vocab.txt, vocab.json, "
NO_TOKENIZER += "spiece.model, sentencepiece.bpe.model, tokenizer.model, tekken.json); "
NO_TOKENIZER += "save the tokenizer with the model"
HUB_DOWN = "is not a local path and not in the local cache, and the Hugging Face hub "
HUB_DOWN += f"({UNREACHABLE}) cannot be reached"
ADDRESS_HINT = "; give the Ray dashboard URL, e.g. http://HEAD:8265"


def exact(args: tuple[str, ...], line: str, **kw) -> Case:
    """A case whose whole message is `line`; its field is what precedes the first ': '."""
    return Case(args, line.partition(": ")[0], line=line, **kw)


ISSUE17: dict[str, Case] = {
    # report / runs list / export on damaged or misplaced run folders
    "report-truncated-json": exact(
        ("report", "r"),
        "{dir}/r/report.json: not valid JSON at line 1 column 10 (truncated?)",
        files={**RUN_CONFIG, "r/report.json": '{"run": {'},
    ),
    "report-missing-sections": exact(
        ("report", "r"),
        "{dir}/r/report.json: not a complete distill report (missing section 'size')",
        files={**RUN_CONFIG, "r/report.json": '{"run": {"name": "r", "wall_time_s": 1.0}}'},
    ),
    "report-json-is-a-folder": exact(
        ("report", "r"),
        "{dir}/r/report.json: is a folder, expected a file",
        files={**RUN_CONFIG, "r/report.json/x": "y"},
    ),
    "runs-list-missing-folder": exact(
        ("runs", "list", "nope"), "runs list: {dir}/nope: no such folder"
    ),
    "runs-list-of-a-file": exact(
        ("runs", "list", "afile"),
        "runs list: {dir}/afile: is a file, not a folder",
        files={"afile": "x\n"},
    ),
    "export-out-under-a-file": exact(
        ("export", "r", "--out", "afile/student"),
        "--out: cannot create afile/student: {dir}/afile is a file, not a folder",
        files={**RUN_CONFIG, "r/student/config.json": "{}", "afile": "x\n"},
    ),
    "export-out-is-a-file": exact(
        ("export", "r", "--out", "afile"),
        "--out: afile is a file, expected a folder",
        files={**RUN_CONFIG, "r/student/config.json": "{}", "afile": "x\n"},
    ),
    "export-broken-config": exact(
        ("export", "r", "--out", "student"),
        "{dir}/r/config.yaml: invalid YAML (while parsing a flow node)",
        files=STOPPED_RUN,
    ),
    # the spec: URLs, finite numbers, seeds, the config path
    "s3-endpoint-not-a-url": exact(
        run_args("output.s3.endpoint_url=not-a-url"),
        "output.s3.endpoint_url: expected an http:// or https:// URL, got 'not-a-url'",
    ),
    "epochs-infinite": exact(
        run_args("training.epochs=.inf"), "training.epochs: Input should be a finite number"
    ),
    "loss-weight-nan": exact(
        run_args("objective.weights={{hidden_mse: .nan}}"),  # {{ }}: str.format escapes
        "objective.weights.hidden_mse: Input should be a finite number",
    ),
    "negative-seed": exact(
        run_args("training.seed=-1"), "training.seed: Input should be greater than or equal to 0"
    ),
    "config-is-a-folder": exact(
        ("run", "cfg"), "config cfg: is a folder, expected a YAML file", files={"cfg/x": ""}
    ),
    "tune-smoke-unknown-base-field": exact(
        ("tune", "s.yaml", "--smoke"),
        "base.student.bogus: unknown field",
        files={"s.yaml": "base: {student: {bogus: 1}}\nspace:\n  student.layers: {grid: [1]}\n"},
    ),
    # --smoke prints what it changed only once the input passed: here it did not
    "smoke-then-bad-data": exact(
        ("run", "--smoke", "--set", "data.train.path=nope.csv"),
        "data.train: data file nope.csv: not found",
    ),
    # the teacher folder, checked completely before Ray
    "teacher-without-weights": exact(
        run_args("teacher.name=./t"),
        f"teacher.name: {{dir}}/t: {NO_WEIGHTS}",
        files={"t/config.json": TEACHER_CONFIG, "t/tokenizer.json": TOKENIZER},
    ),
    "teacher-without-tokenizer": exact(
        run_args("teacher.name=./t"),
        f"teacher.name: {{dir}}/t: {NO_TOKENIZER}",
        files={"t/config.json": TEACHER_CONFIG, "t/model.safetensors": TINY_WEIGHTS},
    ),
    "teacher-truncated-weights": exact(
        run_args("teacher.name=./t"),
        "teacher.name: {dir}/t: model.safetensors is not a readable safetensors file "
        "(Error while deserializing header: header too small)",
        files={"t/config.json": TEACHER_CONFIG, "t/model.safetensors": TINY_WEIGHTS[:4]},
    ),
    # hub names while the hub cannot be reached: at once, in one line
    "hub-teacher-unreachable": exact(
        run_args("teacher.name=nosuchorg/nosuchmodel"),
        f"teacher.name: 'nosuchorg/nosuchmodel' {HUB_DOWN}",
        env=NO_HUB,
    ),
    "hub-dataset-unreachable": exact(
        run_args("data.train.path=nosuchorg/nosuchdata"),
        f"data.train: 'nosuchorg/nosuchdata' {HUB_DOWN}",
        env=NO_HUB,
    ),
    # data files: the reason, and no library log line before it
    "data-malformed-jsonl": exact(
        run_args("data.train.path=bad.jsonl"),
        "data.train: data file {dir}/bad.jsonl: cannot read it as json "
        "(JSON parse error: Missing a name for object member. in row 1)",
        files={"bad.jsonl": '{"text": "a"}\n{bad json\n'},
    ),
    "data-fake-parquet": exact(
        run_args("data.train.path=fake.parquet"),
        "data.train: data file {dir}/fake.parquet: cannot read it as parquet (Parquet magic "
        "bytes not found in footer. Either the file is corrupted or this is not a parquet file.)",
        files={"fake.parquet": "not parquet\n"},
    ),
    "data-empty-file": exact(
        run_args("data.train.path=empty.csv"),
        "data.train: data file {dir}/empty.csv: empty file (0 bytes)",
        files={"empty.csv": ""},
    ),
    "data-latin1": exact(
        run_args("data.train.path=latin1.csv"),
        "data.train: data file {dir}/latin1.csv: not UTF-8 text (byte 0xe9 at offset 8); "
        "save it as UTF-8",
        files={"latin1.csv": b"text\ncaf\xe9 au lait\n"},
    ),
    # the cluster commands with an address that is malformed or answers nothing
    "status-unreachable-address": exact(
        ("status", "j1", "--address", UNREACHABLE),
        f"--address {UNREACHABLE}: cannot reach the Ray dashboard (ConnectionError)",
    ),
    "jobs-address-not-http": exact(
        ("jobs", "--address", "ftp://x"),
        f"--address: expected an http:// or https:// URL, got 'ftp://x'{ADDRESS_HINT}",
    ),
    "logs-address-without-host": exact(
        ("logs", "j1", "--address", "http://"),
        f"--address: 'http://' has no host (expected http://HOST[:PORT]){ADDRESS_HINT}",
    ),
    "stop-address-bad-port": exact(
        ("stop", "j1", "--address", "127.0.0.1:notaport"),
        "--address: 'http://127.0.0.1:notaport' is not a valid URL (Port could not be cast to "
        f"integer value as 'notaport'){ADDRESS_HINT}",
    ),
    # flags argparse refuses: the same one line, no usage block
    "unknown-flag": exact(("run", "--bogus"), "--bogus: unknown argument (see distill --help)"),
    "export-without-out": exact(("export", "r"), "--out: required (see distill export --help)"),
    "tune-max-params-not-a-number": exact(
        ("tune", "s.yaml", "--max-params", "nan"), "--max-params: invalid int value: 'nan'"
    ),
    "unknown-builtin-teacher": exact(
        run_args("teacher.name=builtin:nope"),
        "teacher.name: builtin:nope is no packaged architecture; "
        "choose from ['builtin:tiny-bart', 'builtin:tiny-gpt2']",
    ),
    "submit-bad-spec": exact(
        ("submit", "--address", UNREACHABLE, "--set", "training.seed=-1"),
        "training.seed: Input should be greater than or equal to 0",
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
    env = cli_env(ray_tmp_dir(folder), hf_cache)
    for key, value in case.env.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    proc = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", *(a.format(dir=folder) for a in case.args)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, folder, before)


# Bad input found in round 3 of reliability (issue 33): each one line, and nothing on stdout
# either (no teacher-placement note before the error).
ISSUE33: dict[str, Case] = {
    "inference-gpu-without-a-gpu": exact(
        run_args("teacher.cache.mode=auto", "teacher.inference.gpus_per_actor=1"),
        "teacher.inference.gpus_per_actor: > 0 but no GPU is visible on this machine",
    ),
    "inference-actors-beyond-the-cpus": exact(
        run_args("teacher.inference.actors=8", "teacher.inference.cpus_per_actor=2"),
        f"teacher.inference.actors: 8 actors x 2 CPUs needs 16 CPUs, this machine has "
        f"{os.cpu_count()}",
    ),
    "yaml-duplicate-key": Case(
        ("run", "dup.yaml"),
        "dup.yaml",
        "key 'steps' appears twice in one mapping (lines 2 and 3)",
        files={"dup.yaml": "training:\n  steps: 1\n  steps: 2\n"},
    ),
    "cache-required-with-nothing-cached": Case(
        run_args("teacher.cache.mode=required"), "teacher.cache", "required"
    ),
    "cache-location-a-regular-file": Case(
        run_args("teacher.cache.mode=auto", "teacher.cache.location=afile"),
        "teacher.cache.location",
        "afile",
        files={"afile": "not a folder\n"},
    ),
    "output-under-a-file-prints-no-note": Case(
        run_args("student.layers=2", output="afile/run"),
        "--output",
        "afile/run",
        files={"afile": "not a folder\n"},
        run_folder="afile/run",
    ),
}


def _all_cases() -> dict[str, Case]:
    return {**CASES, **ISSUE17, **ISSUE33, **{name: case for name, (case, _) in GAPS.items()}}


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
    if case.line:
        assert line == ERROR_PREFIX + case.line.format(dir=out.folder)


def check_no_ray(case: Case, out: Outcome) -> None:
    """Ray printed nothing, created no session folder, and the run folder got no train/."""
    # Ray's own output; our error line may name "the Ray dashboard".
    text = "\n".join(
        ln for ln in (out.stdout + out.stderr).splitlines() if not ln.startswith(ERROR_PREFIX)
    )
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


@pytest.mark.parametrize("name", ISSUE17)
def test_issue17_bad_inputs_exit_2_with_exactly_one_line_before_ray(name, outcomes):
    case, out = ISSUE17[name], outcomes[name]
    check_rejected(case, out)
    check_one_line(out)
    check_no_ray(case, out)


def test_runs_list_shows_a_damaged_run_and_lists_the_others(tmp_path):
    """One run with a truncated report.json, one with a config.yaml that does not parse,
    one finished normally: exit 0, the good one listed with its numbers."""
    files = {
        "runs/good/config.yaml": RUN_CONFIG["r/config.yaml"],
        "runs/good/report.json": json.dumps(GOOD_REPORT),
        "runs/cut/config.yaml": RUN_CONFIG["r/config.yaml"],
        "runs/cut/report.json": '{"run": {"name": "cut", "wall',
        "runs/yaml/config.yaml": "student: [\n",
    }
    out = _run_case(Case(("runs", "list", "runs"), "", files=files), tmp_path / "c", tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "steps", "final", "loss", "quality", "speed-up"]
    rows = {ln.split()[0]: ln for ln in lines[1:4]}
    assert rows["good"].split()[1:3] == ["completed", "20"]
    assert rows["cut"].split()[1] == "damaged" and rows["yaml"].split()[1] == "damaged"
    assert "cut: damaged: report.json: not valid JSON at line 1 column 25 (truncated?)" in lines
    assert "yaml: damaged: config.yaml: invalid YAML (while parsing a flow node)" in lines


@pytest.mark.parametrize("name", ISSUE33)
def test_round3_bad_inputs_are_one_line_and_no_note(name, outcomes):
    case, out = ISSUE33[name], outcomes[name]
    check_rejected(case, out)
    check_one_line(out)
    check_no_ray(case, out)
    assert out.stdout == "", out.stdout[-2000:]


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
