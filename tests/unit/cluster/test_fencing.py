"""Fencing (cluster/lease.py): a writer whose run-folder lease was taken over stops at its
next write with one line, leaving the other writer's files alone; the renewal thread, a Ray
Train worker, the Train controller's checkpoint callback and a Tune trial each stop the same
way; readers rank checkpoints by the lease generation that wrote them. Everything here runs
on local disk with real leases, in seconds; the paused-writer case end to end (SIGSTOP past
the lease, a second run takes over, SIGCONT) is tests/integration/test_fencing_e2e.py (slow)."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pyarrow.fs
import pytest
from helpers.checkpoint_folders import NEWER, OLDER, make_checkpoint
from helpers.storage_checks import lease

from distill.cluster.checkpoints import COMPLETE, newest_intact
from distill.cluster.lease import check_fence, enter_fence, fence_of, hold_lease
from distill.cluster.local_storage import LocalStorage
from distill.cluster.storage import LeaseLost
from distill.cluster.storage_protocol import unfence

LINE = re.compile(
    r"lost the lease on (?P<uri>\S+) to node-b/99 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; "
    r"stopped writing"
)


def _take_over(store: LocalStorage) -> None:
    """Another writer (host node-b, pid 99) forces its way in, as `--force` would."""
    store.acquire_lease(lease("other", host="node-b", pid=99), force=True)


def test_a_writer_that_lost_its_lease_stops_at_its_next_write(tmp_path):
    store = LocalStorage(tmp_path / "run")
    lost: list[LeaseLost] = []
    with hold_lease(store, on_lost=lost.append) as fence:
        store.write_text("report.json", "{}")  # its own lease: writes go through
        store.child("train").put("a.bin", b"a")
        assert fence.generation == 1
        _take_over(store)
        (tmp_path / "run" / "theirs.txt").write_text("the other writer's file")
        for write in (
            lambda: store.write_text("report.json", '{"late": true}'),
            lambda: store.append_text("train/reports.jsonl", "{}\n"),
            lambda: store.child("train").put("b.bin", b"b"),
            lambda: store.delete("theirs.txt"),
            lambda: store.put_dir(tmp_path, "export"),
        ):
            with pytest.raises(LeaseLost) as refused:
                write()
            assert LINE.fullmatch(str(refused.value)).group("uri") == store.uri
    assert store.read_text("report.json") == "{}"
    assert (tmp_path / "run" / "theirs.txt").read_text() == "the other writer's file"
    assert not store.exists("train/b.bin") and not store.exists("export")
    held, _ = store.read_lease()  # the block's end released nothing: the lease is theirs
    assert held.token == "other" and held.generation == 2 and not held.released
    store.write_text("after.txt", "x")  # the block ended: no fence any more


def test_the_renewal_thread_reports_a_taken_lease_once(tmp_path):
    store = LocalStorage(tmp_path / "run")
    lost: list[LeaseLost] = []
    with hold_lease(store, ttl_s=0.4, on_lost=lost.append):
        _take_over(store)
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # no second call
    assert len(lost) == 1 and LINE.fullmatch(str(lost[0]))


def test_by_default_a_writer_that_lost_its_lease_exits_1_with_one_line(tmp_path):
    """The default reaction ends the process at once: no `finally` that could still write."""
    script = textwrap.dedent(
        f"""
        import time
        from helpers.storage_checks import lease
        from distill.cluster.lease import hold_lease
        from distill.cluster.local_storage import LocalStorage
        store = LocalStorage({str(tmp_path / "run")!r})
        try:
            with hold_lease(store, ttl_s=0.4):
                store.acquire_lease(lease("other", host="node-b", pid=99), force=True)
                time.sleep(10)
        finally:
            store.write_text("written-after-loss.txt", "must not exist")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(_tests_dir()), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("distill: error: ") and LINE.fullmatch(line[len("distill: error: ") :])
    assert not (tmp_path / "run" / "written-after-loss.txt").exists()


def _tests_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_other_processes_enter_the_fence_by_reference(tmp_path):
    """What a Train worker or a Tune trial gets: a picklable `FenceRef`; entering it checks
    at once, and fences every later write under the folder (a sweep's trials included)."""
    sweep = LocalStorage(tmp_path / "sweep")
    with hold_lease(sweep, on_lost=lambda exc: None) as fence:
        trial_uri = sweep.child("trials/t1").uri
        assert fence_of(trial_uri) == fence == pickle.loads(pickle.dumps(fence))
        assert fence_of(str(tmp_path / "elsewhere")) is None
        check_fence(fence)  # still current
        enter_fence(fence)  # as a worker process would (here: the same process)
        _take_over(sweep)
        with pytest.raises(LeaseLost):
            check_fence(fence)
        with pytest.raises(LeaseLost):
            enter_fence(fence)  # a process started after the loss writes nothing
        with pytest.raises(LeaseLost):
            LocalStorage(trial_uri).write_text("report.json", "{}")
    unfence(sweep.uri)
    check_fence(None)  # a job without a lease: nothing to check
    enter_fence(None)


def test_the_controller_marks_no_checkpoint_complete_once_fenced_out(tmp_path, monkeypatch):
    from distill.cluster import lease as lease_module
    from distill.cluster import manifest_callback

    stops: list[LeaseLost] = []

    def stop(exc: LeaseLost) -> None:  # as the real one: nothing after it runs
        stops.append(exc)
        raise SystemExit(1)

    monkeypatch.setattr(lease_module, "stop_writer", stop)
    run = LocalStorage(tmp_path / "run")
    make_checkpoint(run, OLDER, 4, manifest=False)
    checkpoint = SimpleNamespace(
        filesystem=pyarrow.fs.LocalFileSystem(), path=str(run.path(f"train/{OLDER}"))
    )
    with hold_lease(run, on_lost=lambda exc: None) as fence:
        manifest_writer = manifest_callback.CheckpointManifest(fence)
        controller = manifest_callback.ControllerFence(fence)
        controller.after_report(None, [{"step": 4}], None)
        manifest_writer.after_report(None, [{"step": 4}], checkpoint)
        manifest = json.loads(run.read_text(f"train/{OLDER}/{COMPLETE}"))
        assert manifest["generation"] == fence.generation == 1 and not stops
        run.delete(f"train/{OLDER}/{COMPLETE}")
        _take_over(run)
        for call in (
            lambda: controller.after_report(None, [{"step": 5}], None),  # every report
            lambda: controller.after_exception(None, {0: LeaseLost(run.uri, None)}),
            lambda: manifest_writer.after_report(None, [{"step": 4}], checkpoint),
        ):
            with pytest.raises(SystemExit):
                call()
    assert not run.exists(f"train/{OLDER}/{COMPLETE}")
    assert len(stops) == 3 and all(LINE.fullmatch(str(s)) for s in stops)


def test_readers_rank_checkpoints_by_the_generation_that_wrote_them(tmp_path):
    """A fenced-out writer (generation 1) that finished a checkpoint after the writer that
    took over (generation 2) wrote its own: resume takes generation 2's, though older."""
    run = LocalStorage(tmp_path / "run")
    make_checkpoint(run, OLDER, 8)
    make_checkpoint(run, NEWER, 4)
    for name, generation in ((OLDER, 2), (NEWER, 1)):
        path = f"train/{name}/{COMPLETE}"
        run.write_text(
            path, json.dumps({**json.loads(run.read_text(path)), "generation": generation})
        )
    choice = newest_intact(run)
    assert choice.intact["name"] == OLDER and choice.intact["step"] == 8 and not choice.damaged


def test_the_cli_turns_a_lost_lease_into_exit_1_and_one_line(monkeypatch, capsys):
    from distill.jobs import cli

    def fenced_out(args):
        raise LeaseLost("/runs/a", lease("other", host="node-b", pid=99))

    # The CLI shuts Ray down before its line (Ray flushes buffered worker logs at shutdown);
    # record that instead of shutting down the Ray instance other tests in this process share.
    import ray

    shutdowns = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(capsys.readouterr().err))
    monkeypatch.setattr(cli, "_run", fenced_out)
    assert cli.main(["run"]) == cli.EXIT_FAILED
    assert shutdowns == [""], "Ray must be shut down before the error line is printed"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert LINE.fullmatch(line[len("distill: error: ") :]).group("uri") == "/runs/a"


def test_an_unreadable_lease_is_an_outage_not_a_lost_lease(tmp_path):
    """The fence reads the lease before each write; when the storage cannot answer (an S3
    outage), the write goes ahead and fails or succeeds on its own, as without a fence: a
    short outage must not stop a run that still holds its lease."""
    from distill.cluster.storage_protocol import Fence

    store = LocalStorage(tmp_path / "run")
    with hold_lease(store, on_lost=lambda exc: None) as ref:
        fence = Fence(store, ref.token, ref.generation)

        def unreachable():
            raise OSError("Connection was closed before we received a valid response")

        store.read_lease = unreachable
        fence.check()
        store.write_text("report.json", "{}")
        del store.read_lease
        _take_over(store)
        with pytest.raises(LeaseLost):
            fence.check()
