"""A Ray Train callback, run on the controller, that keeps `reports.jsonl` in the Ray run
folder (`<run>/train/reports.jsonl` for a one-stage job): one line per `ray.train.report`
of the workers and one per worker-group failure. It is how an operator (and the fault
tests) sees what a run went through: the steps each attempt reported, whether a report
carried a checkpoint, which node every rank ran on, and the error of each failure.

    {"event": "report", "attempt": 0, "step": 4, "checkpoint": true, "nodes": ["ab12..", "cd34.."], ...}
    {"event": "failure", "attempt": 0, "ranks": {"1": "ActorDiedError: ... node_id ..."}, ...}

`attempt` counts the failures seen before the event (0: the first worker group). The file
carries over the events of earlier invocations of the same run (a resume).
"""

from __future__ import annotations

import json
import time

import pyarrow.fs
import ray.train

REPORTS_FILE = "reports.jsonl"
_ERROR_CHARS = 500


def _error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]


class ReportLog(ray.train.UserCallback):
    def __init__(self) -> None:
        self._events: list[dict] | None = None  # None: not yet read from storage
        self._failures = 0

    def _where(self, run_context) -> tuple[pyarrow.fs.FileSystem, str]:
        rc = run_context.get_run_config()
        fs = rc.storage_filesystem or pyarrow.fs.LocalFileSystem()
        return fs, f"{str(rc.storage_path).rstrip('/')}/{rc.name}/{REPORTS_FILE}"

    def _append(self, run_context, event: dict) -> None:
        fs, path = self._where(run_context)
        if self._events is None:
            self._events = []
            if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(path) as f:
                    lines = f.read().decode().splitlines()
                self._events = [json.loads(line) for line in lines if line.strip()]
        self._events.append({"time": round(time.time(), 3), "attempt": self._failures, **event})
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        # Rewritten whole: object stores have no append, and the file stays small.
        with fs.open_output_stream(path) as f:
            f.write("".join(json.dumps(e) + "\n" for e in self._events).encode())

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        first = metrics[0] if metrics else {}
        self._append(
            run_context,
            {
                "event": "report",
                "step": first.get("step"),
                "checkpoint": checkpoint is not None,
                "loss": first.get("loss"),
                "nodes": [m.get("node_id") for m in metrics],
                "pids": [m.get("pid") for m in metrics],
            },
        )

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        self._append(
            run_context,
            {
                "event": "failure",
                "ranks": {str(r): _error_line(e) for r, e in sorted(worker_exceptions.items())},
            },
        )
        self._failures += 1


def read_reports(path) -> list[dict]:
    """The events of a local `reports.jsonl`."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def retries(events: list[dict]) -> list[dict]:
    """One row per worker-group failure in a run's events: the checkpoint step the retry
    resumed from, the last step reported before the failure, the steps redone (reported
    again after it), and seconds from the failure to the retry's first report."""
    rows = []
    for i, event in enumerate(events):
        if event["event"] != "failure":
            continue
        before = [
            e for e in events[:i] if e["event"] == "report" and e["attempt"] == event["attempt"]
        ]
        after = next((e for e in events[i + 1 :] if e["event"] == "report"), None)
        last = max((e["step"] for e in before), default=0)
        if after is None:
            rows.append(
                {"last_reported": last, "resumed_from": None, "redone": None, "restart_s": None}
            )
            continue
        resumed = after["step"] - 1  # the first step after a restore is the checkpoint's + 1
        rows.append(
            {
                "last_reported": last,
                "resumed_from": resumed,
                "redone": max(0, last - resumed),
                "restart_s": round(after["time"] - event["time"], 1),
            }
        )
    return rows
