"""The fast representative of the slow node-loss test (`tests/integration/test_cluster_ops.py::
test_losing_the_worker_node_mid_run_retries_on_the_head`): `reports.jsonl` names the node a
failed attempt lost, from Ray's node table, and `retries` says what the retry redid. Here the
node table is a fake (no cluster is started); the callback, the file and the parsing are real."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distill.cluster import report_log
from distill.cluster.report_log import REPORTS_FILE, ReportLog, read_reports, retries


class _RunContext:
    def __init__(self, root):
        self._config = SimpleNamespace(
            storage_filesystem=None, storage_path=str(root), name="train"
        )

    def get_run_config(self):
        return self._config


def _report(log: ReportLog, context, step: int, nodes=("head", "worker"), pids=(11, 12)):
    metrics = [
        {"step": step, "loss": 1.0 / step, "node_id": n, "pid": p} for n, p in zip(nodes, pids)
    ]
    log.after_report(context, metrics, checkpoint=object() if step % 2 == 0 else None)


@pytest.fixture
def node_table(monkeypatch):
    """Ray's node table as the GCS gives it after the worker node stopped answering."""
    table = [
        {"NodeID": "head", "Alive": True, "NodeManagerAddress": "10.0.0.1"},
        {"NodeID": "worker", "Alive": False, "NodeManagerAddress": "10.0.0.7"},
        {"NodeID": "elsewhere", "Alive": False, "NodeManagerAddress": "10.0.0.9"},  # not ours
    ]
    calls = []
    monkeypatch.setattr(report_log.ray, "nodes", lambda: calls.append(1) or table)
    return calls


def test_a_crash_names_the_lost_node_and_the_retry_redoes_the_steps_after_the_checkpoint(
    tmp_path, node_table
):
    log, context = ReportLog(), _RunContext(tmp_path)
    for step in (1, 2, 3):
        _report(log, context, step)
    log.after_exception(context, {0: RuntimeError("ActorDiedError: the actor died unexpectedly")})
    for step in (3, 4):  # the retry restored step 2's checkpoint, on the head only
        _report(log, context, step, nodes=("head", "head"), pids=(21, 22))

    events = read_reports(tmp_path / "train" / REPORTS_FILE)
    failure = next(e for e in events if e["event"] == "failure")
    assert failure["lost_nodes"] == [{"node_id": "worker", "address": "10.0.0.7"}]
    assert failure["attempt"] == 0 and failure["ranks"]["0"].startswith("RuntimeError: ActorDied")
    assert [e["attempt"] for e in events if e["event"] == "report"] == [0, 0, 0, 1, 1]
    (row,) = retries(events)
    assert (row["last_reported"], row["resumed_from"], row["redone"]) == (3, 2, 1)


def test_an_error_that_is_no_crash_asks_ray_nothing(tmp_path, node_table):
    log, context = ReportLog(), _RunContext(tmp_path)
    _report(log, context, 1)
    log.after_exception(context, {1: ValueError("labels: expected 2 classes")})
    (failure,) = [
        e for e in read_reports(tmp_path / "train" / REPORTS_FILE) if e["event"] == "failure"
    ]
    assert failure["lost_nodes"] == [] and failure["dead_workers"] == []
    assert node_table == []  # the GCS was not asked


def test_a_resumed_run_keeps_the_events_of_earlier_invocations(tmp_path, node_table):
    context = _RunContext(tmp_path)
    _report(ReportLog(), context, 1)
    _report(ReportLog(), context, 2)  # a new driver: reads the file before appending
    steps = [e["step"] for e in read_reports(tmp_path / "train" / REPORTS_FILE)]
    assert steps == [1, 2]
