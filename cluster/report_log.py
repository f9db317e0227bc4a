"""A Ray Train callback, run on the controller, that keeps `reports.jsonl` in the Ray run
folder (`<run>/train/reports.jsonl` for a one-stage job): one line per `ray.train.report`
of the workers and one per worker-group failure. It is how an operator (and the fault
tests) sees what a run went through: the steps each attempt reported, whether a report
carried a checkpoint, which node every rank ran on, and the error of each failure.

    {"event": "report", "attempt": 0, "step": 4, "checkpoint": true, "nodes": ["ab12..", "cd34.."], ...}
    {"event": "failure", "attempt": 0, "ranks": {"1": "ActorDiedError: ..."},
     "lost_nodes": [{"node_id": "cd34..", "address": "10.0.0.7"}], ...}

`lost_nodes` / `dead_workers` are Ray's own view (the GCS's node table, the state API's
dead Train worker actors) of what the attempt lost, whichever rank's error arrived first.

`attempt` counts the failures seen before the event (0: the first worker group). The file
carries over the events of earlier invocations of the same run (a resume).
"""

from __future__ import annotations

import json
import time

import pyarrow.fs
import ray
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
                **({"stage": first["stage"]} if "stage" in first else {}),
                "checkpoint": checkpoint is not None,
                "loss": first.get("loss"),
                "nodes": [m.get("node_id") for m in metrics],
                "pids": [m.get("pid") for m in metrics],
            },
        )

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        ranks = {str(r): _error_line(e) for r, e in sorted(worker_exceptions.items())}
        event = {"event": "failure", "ranks": ranks, "lost_nodes": [], "dead_workers": []}
        if any(_looks_like_a_crash(e) for e in worker_exceptions.values()):
            event.update(what_died(*self._run_placement()))
        self._append(run_context, event)
        self._failures += 1

    def _run_placement(self) -> tuple[set[str], set[int]]:
        """(nodes, pids) this attempt's ranks reported from."""
        reports = [
            e
            for e in self._events or []
            if e["event"] == "report" and e["attempt"] == self._failures
        ]
        nodes = {n for e in reports for n in e.get("nodes") or [] if n}
        pids = {p for e in reports for p in e.get("pids") or [] if p}
        return nodes, pids


# Errors a rank sees when a peer or its node dies (Ray's actor errors, gloo's broken pipes).
_CRASH_SIGNS = ("ActorDied", "ActorError", "crash", "Connection closed", "Connection reset", "GLOO")


def _looks_like_a_crash(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(sign.lower() in text.lower() for sign in _CRASH_SIGNS)


def what_died(
    run_nodes: set[str], run_pids: set[int], wait_s: float = 30.0, poll_s: float = 0.5
) -> dict:
    """Ray's own view of what a failed attempt lost: `lost_nodes` [{node_id, address}] of
    the run's nodes the GCS marks dead, and `dead_workers` [{pid, node_id}] of the run's
    Train workers that died on a live node. Polled for up to `wait_s`: the GCS marks a node
    dead only after missed health checks, while a surviving rank's error arrives at once.
    Both empty when Ray cannot say (the ranks' errors then stand alone)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + wait_s
    while True:
        try:
            nodes = ray.nodes()
            dead_nodes = [
                {"node_id": n["NodeID"], "address": n.get("NodeManagerAddress")}
                for n in nodes
                if n["NodeID"] in run_nodes and not n.get("Alive", True)
            ]
            if dead_nodes:
                return {"lost_nodes": dead_nodes, "dead_workers": []}
            actors = list_actors(
                # This cluster's GCS, never "auto": other Ray instances may run on the node.
                address=ray.get_runtime_context().gcs_address,
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "DEAD")],
                raise_on_missing_output=False,
            )
            dead = [{"pid": a.pid, "node_id": a.node_id} for a in actors if a.pid in run_pids]
            if dead:
                return {"lost_nodes": [], "dead_workers": dead}
        except Exception:  # noqa: BLE001 - the GCS or state API is unreachable
            return {"lost_nodes": [], "dead_workers": []}
        if time.monotonic() >= deadline:
            return {"lost_nodes": [], "dead_workers": []}
        time.sleep(poll_s)


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
