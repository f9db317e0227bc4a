"""The `distill` command line.

    distill run [CONFIG.yaml] [--set key=value ...] [--output DIR] [--smoke]
    distill report RUN_DIR [--json]
    distill runs list LOCATION          (a folder or s3://bucket/prefix)
    distill export RUN --out DIR        (RUN: a run folder or s3://bucket/prefix/RUN)
    distill submit [CONFIG.yaml] --address http://HEAD:8265 [--set ...]   (jobs/submit.py)
    distill status JOB | logs JOB [--follow] | stop JOB | jobs            (a Ray cluster's jobs)

Bad input prints one line naming the field or file and exits with code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs import runs, submit
from jobs.spec import SpecError, load_spec
from jobs.stages import smoke_pipeline

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Distributed knowledge distillation on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a distillation job (no CONFIG: the offline quickstart)")
    run.add_argument("config", nargs="?", help="job spec YAML")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help="override a spec field, e.g. training.steps=50",
    )
    run.add_argument("--output", help="run folder (default: output.dir/output.name)")
    run.add_argument(
        "--smoke", action="store_true", help="tiny steps/data/eval: finishes in about a minute"
    )
    report = sub.add_parser("report", help="print a run's report.json as a table")
    report.add_argument("run_dir")
    report.add_argument("--json", action="store_true", help="print the raw JSON")
    runs.add_s3_flags(report)
    runs.add_parsers(sub)
    submit.add_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides = [item for group in args.overrides for item in group]
    spec = load_spec(args.config, overrides)  # before the heavy imports: bad specs fail fast
    if args.smoke:
        spec = smoke_pipeline(spec)

    import datasets
    import transformers
    from ray.train import TrainingFailedError

    from jobs.report import format_table
    from jobs.run import run_job

    # Progress bars on the driver would split a one-line error; workers keep their own logs.
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    try:
        report = run_job(spec, args.output)
    except TrainingFailedError as exc:
        # Not bad input: the job ran and failed. Say why in one line; Ray printed the rest.
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"distill: error: training failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(format_table(report))
    return 0


def _report(args: argparse.Namespace) -> int:
    from jobs.report import format_table, read_report

    report = read_report(args.run_dir, runs.s3_options(args))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"run": _run, "report": _report}
        commands.update(runs=runs.runs_command, export=runs.export_command)
        commands.update(submit.COMMANDS)
        return commands[args.command](args)
    except SpecError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
