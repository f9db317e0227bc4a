"""The `distill` command line.

    distill run [CONFIG.yaml] [--set key=value ...] [--output DIR] [--smoke] [--force]
                [--address HEAD:6379]
    distill tune SWEEP.yaml [--set key=value ...] [--output DIR] [--smoke] [--force]
                 [--max-params N] [--min-speedup X] [--submit --address URL]
    distill report RUN_OR_SWEEP_DIR [--json]
    distill runs list LOCATION          (a folder or s3://bucket/prefix)
    distill export RUN --out DIR [--format onnx [--quantize int8]]
                                        (RUN: a run folder or s3://bucket/prefix/RUN)
    distill --version
    distill submit [CONFIG.yaml] --address http://HEAD:8265 [--set ...]   (jobs/submit.py)
    distill status JOB | logs JOB [--follow] | stop JOB | jobs            (a Ray cluster's jobs)

Bad input prints one line naming the field or file and exits with code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from distill.cluster.storage_protocol import LeaseLost
from distill.cluster.worker_env import in_job_working_dir
from distill.core.named_files import check_named_files
from distill.core.smoke import SmokePlan
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec, override_fields
from distill.core.stages import expand_stages, smoke_pipeline_planned
from distill.jobs import runs, submit
from distill.jobs.cluster_client import run_address
from distill.jobs.flags import add_overrides_flag, check_limit

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
_FORCE_HELP = "take over the folder's lease from another writer (it may still be running)"


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of all bad input: `distill: error: <flag>: <what>`
    (no usage block), exit code 2. Subcommand parsers are of this class too."""

    def error(self, message: str):
        for lead, says in _ARGPARSE_LEADS.items():
            if message.startswith(lead):
                message = f"{message.removeprefix(lead)}: {says} (see {self.prog} --help)"
        print(f"distill: error: {message.removeprefix('argument ')}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


# argparse messages that name the flags last, turned around to name them first.
_ARGPARSE_LEADS = {
    "the following arguments are required: ": "required",
    "unrecognized arguments: ": "unknown argument",
}


def version_line() -> str:
    """`distill --version`: this package's version and the stack it runs on (read from the
    installed distributions' metadata, so nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{n} {of(n)}" for n in ("torch", "ray", "deepspeed", "transformers"))
    return f"distill {of('distill')} ({stack}; Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """Prints `version_line()` unwrapped (argparse's own action wraps it at 80 columns)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


# `distill COMMAND --help` ends with these examples (every path exists in a fresh clone).
EXAMPLES = {
    "run": [
        "distill run                                   # the offline quickstart (no hub, CPU)",
        "distill run --smoke                           # the same in about a minute",
        "distill run examples/minilm.yaml --set training.steps=50 --output runs/minilm",
        "distill run --set deepspeed.config=ds.json training.gradient_accumulation_steps=4",
        "distill run --address 10.0.0.7:6379           # join a running Ray cluster",
    ],
    "tune": [
        "distill tune examples/sweep_depth_width.yaml --smoke",
        "distill tune examples/sweep_depth_width.yaml --max-params 12000000",
        "distill tune examples/sweep_depth_width.yaml --submit --address http://HEAD:8265",
    ],
    "report": [
        "distill report runs/quickstart                # the table; also writes curves.png",
        "distill report runs/quickstart --json",
        "distill report s3://bucket/runs/quickstart --endpoint-url http://localhost:9000",
    ],
    "runs": ["distill runs list runs", "distill runs list s3://bucket/runs --json"],
    "export": [
        "distill export runs/quickstart --out ./student",
        "distill export runs/quickstart --out ./serving --format onnx --quantize int8",
    ],
    "submit": [
        "distill submit examples/minilm.yaml --address http://HEAD:8265 "
        "--output s3://bucket/runs/minilm --follow",
    ],
    "status": ["distill status raysubmit_XYZ --address http://HEAD:8265"],
    "logs": ["distill logs raysubmit_XYZ --follow --address http://HEAD:8265"],
    "stop": ["distill stop raysubmit_XYZ --wait --address http://HEAD:8265"],
    "jobs": ["distill jobs --address http://HEAD:8265"],
}


def _add_examples(sub) -> None:
    for name, parser in sub.choices.items():
        lines = EXAMPLES.get(name)
        if lines:
            parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
            parser.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distill",
        description="Distributed knowledge distillation on Ray.",
        epilog="examples:\n  distill run --smoke\n  distill report runs/quickstart\n"
        "  distill COMMAND --help      # examples of each command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the version of distill and its stack"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a distillation job (no CONFIG: the offline quickstart)")
    run.add_argument("config", nargs="?", help="job spec YAML")
    add_overrides_flag(run, "spec", "training.steps=50")
    run.add_argument("--output", help="run folder (default: output.dir/output.name)")
    run.add_argument(
        "--smoke", action="store_true", help="tiny steps/data/eval: finishes in about a minute"
    )
    run.add_argument("--force", action="store_true", help=_FORCE_HELP)
    run.add_argument(
        "--address",
        help="Ray address to join, HEAD:6379 or auto (default: RAY_ADDRESS, else a local Ray); "
        "a dashboard URL goes to `distill submit`",
    )
    tune = sub.add_parser("tune", help="search student depth/width with Ray Tune (a sweep)")
    tune.add_argument("sweep", help="sweep YAML: base job spec + search space")
    add_overrides_flag(tune, "sweep", "base.training.steps=200 or search.num_samples=8")
    tune.add_argument("--output", help="sweep folder (default: base output.dir/output.name)")
    tune.add_argument("--smoke", action="store_true", help="a 2-4-trial version in minutes")
    tune.add_argument("--max-params", type=int, help="export the best student this small")
    tune.add_argument("--min-speedup", type=float, help="export the best student this fast")
    tune.add_argument("--force", action="store_true", help=_FORCE_HELP)
    submit.add_submit_flags(tune, with_submit=True)  # tune --submit --address: on a cluster
    report = sub.add_parser("report", help="print a run's report.json or a sweep's table")
    report.add_argument("run_dir")
    report.add_argument("--json", action="store_true", help="print the raw JSON")
    runs.add_s3_flags(report)
    runs.add_parsers(sub)
    submit.add_parsers(sub)
    _add_examples(sub)
    return parser


def _smoke_note(plan: SmokePlan | None):
    """Prints what --smoke changed, once the input has passed every check (a rejected
    input gets its one error line and nothing else)."""
    if plan is None:
        return None
    return lambda: print(f"distill: smoke: {plan.describe()}", file=sys.stderr, flush=True)


def _join(address: str | None) -> None:
    """Checks the Ray address this process will join (`--address` wins over `RAY_ADDRESS`)
    and makes it the one Ray, preflight and the workers see."""
    resolved = run_address(address)
    if resolved is not None:
        os.environ["RAY_ADDRESS"] = resolved


def _run(args: argparse.Namespace) -> int:
    _join(args.address)
    spec = load_spec(args.config, args.overrides)  # before the heavy imports: bad specs fail fast
    plan = None
    if args.smoke:
        spec, plan = smoke_pipeline_planned(spec, override_fields(args.overrides))
    # A mistyped path: one line before ~10 s of imports (in a submitted job, as its nodes see it).
    check_named_files(expand_stages(in_job_working_dir(spec)))

    import datasets
    import transformers
    from ray.train import TrainingFailedError

    from distill.jobs.report import format_table
    from distill.jobs.run import TrainingDiverged, run_job

    # Progress bars on the driver would split a one-line error; workers keep their own logs.
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    try:
        report = run_job(spec, args.output, force=args.force, on_checked=_smoke_note(plan))
    except TrainingFailedError as exc:
        # Not bad input: the job ran and failed. Say why in one line; Ray printed the rest.
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        _quiet_ray()
        print(f"distill: error: training failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingDiverged as exc:
        _quiet_ray()
        print(f"distill: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_table(report))
    return 0


def _quiet_ray() -> None:
    """Shut Ray down before the final error line: at shutdown it flushes its deduplicated
    worker logs to stderr, which would otherwise follow (and bury) that line."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _tune(args: argparse.Namespace) -> int:
    check_limit("--max-params", args.max_params)
    check_limit("--min-speedup", args.min_speedup)
    if args.submit:
        return submit.tune_submit_cli(args)
    if args.address:
        raise SpecError("--address: goes with --submit (without it the sweep runs here)")
    _join(None)
    from distill.cluster.sweep_spec import load_sweep
    from distill.jobs.tune import smoke_sweep_planned

    sweep = load_sweep(args.sweep, args.overrides)
    plan = None
    if args.smoke:
        sweep, plan = smoke_sweep_planned(sweep, override_fields(args.overrides))

    import datasets
    import transformers

    from distill.jobs.sweep_report import format_sweep_table
    from distill.jobs.tune import run_sweep

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    report = run_sweep(
        sweep,
        args.output,
        max_params=args.max_params,
        min_speedup=args.min_speedup,
        force=args.force,
        on_checked=_smoke_note(plan),
    )
    print(format_sweep_table(report))
    if report["counts"].get("interrupted"):
        return EXIT_INTERRUPTED  # like Ctrl-C anywhere; the same command resumes the sweep
    return 0 if report["counts"]["completed"] else EXIT_FAILED


def _report(args: argparse.Namespace) -> int:
    from distill.jobs.run_folder import read_run_report

    found = read_run_report(args.run_dir, runs.s3_options(args))
    if args.json:
        print(json.dumps(found.report, indent=2))
        return 0
    if found.kind == "sweep":
        from distill.jobs.sweep_report import format_sweep_table

        print(found.formatted(format_sweep_table))
    else:
        from distill.jobs.report import format_table

        print(found.formatted(format_table))
    if found.kind == "run":
        _draw_curves(found.root, args)
    return 0


def _draw_curves(root: str, args: argparse.Namespace) -> None:
    """curves.png next to the run's report.json (stderr says where; a folder this user
    cannot write to is a one-line note, not a failure of the report)."""
    from distill.cluster.storage import StorageError, open_storage
    from distill.jobs.curves import write_curves

    try:
        where = write_curves(open_storage(root, runs.s3_options(args)))
    except (OSError, StorageError) as exc:
        print(f"distill: curves.png not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if where:
        print(f"curves: {where}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"run": _run, "tune": _tune, "report": _report}
        commands.update(runs=runs.runs_command, export=runs.export_command)
        commands.update(submit.COMMANDS)
        return commands[args.command](args)
    except SpecError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LeaseLost as exc:  # another writer took the folder over: this one stopped writing
        _quiet_ray()
        print(f"distill: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
