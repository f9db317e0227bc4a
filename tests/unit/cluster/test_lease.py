"""One writer per run folder on local disk: the lease file is created exclusively, a holder
on this host whose process is gone loses it at once, `hold_lease` renews it while the
block runs and releases it however the block ends, and `distill run` refuses a second
writer in one line naming the holder (exit 2) unless `--force`. (The protocol's lease
checks, shared with S3, are in tests/helpers/storage_checks.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers.storage_checks import lease

from distill.cluster.lease import hold_lease, new_lease
from distill.cluster.local_storage import LocalStorage
from distill.cluster.storage import Lease, LeaseHeld
from distill.cluster.storage_protocol import LEASE_FILE
from distill.core.spec import SpecError
from distill.jobs.cli import build_parser
from distill.jobs.preflight import take_lease


def _held(store: LocalStorage) -> Lease | None:
    """The folder's holder (None when it has none: no lease, or a released one), without
    the generation the storage added, to compare with the lease that was taken."""
    held, _ = store.read_lease()
    return None if held is None or held.released else dataclasses.replace(held, generation=0)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lease_file_names_its_holder(tmp_path):
    store = LocalStorage(tmp_path / "run")
    mine = new_lease(ttl_s=60)
    assert store.acquire_lease(mine) is None
    on_disk = json.loads(store.path(LEASE_FILE).read_text())
    assert on_disk["host"] == socket.gethostname() and on_disk["pid"] == os.getpid()
    assert on_disk["started"] <= time.time() < on_disk["expires"] <= time.time() + 60


def test_a_live_holder_on_this_host_keeps_its_lease(tmp_path):
    store = LocalStorage(tmp_path / "run")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.acquire_lease(lease("alive", host=socket.gethostname(), pid=other.pid))
        with pytest.raises(
            LeaseHeld, match=f"host {socket.gethostname()}, pid {other.pid}, since "
        ):
            store.acquire_lease(new_lease())
    finally:
        other.kill()
        other.wait()


def test_a_dead_holder_on_this_host_loses_its_lease_before_it_expires(tmp_path):
    store = LocalStorage(tmp_path / "run")
    dead = lease("dead", host=socket.gethostname(), pid=_dead_pid(), ttl_s=3600)
    store.acquire_lease(dead)
    mine = new_lease()
    assert store.acquire_lease(mine).token == dead.token and _held(store) == mine


def test_a_holder_on_another_host_is_not_judged_by_its_pid(tmp_path):
    store = LocalStorage(tmp_path / "run")
    store.acquire_lease(lease("remote", host="elsewhere", pid=_dead_pid()))
    with pytest.raises(LeaseHeld, match="host elsewhere"):
        store.acquire_lease(new_lease())


def test_only_one_of_many_simultaneous_writers_gets_a_free_lease(tmp_path):
    store = LocalStorage(tmp_path / "run")
    results, start = [], threading.Barrier(8)

    def race(i: int) -> None:
        start.wait()
        try:
            results.append(LocalStorage(store.root).acquire_lease(lease(f"w{i}")) or "won")
        except LeaseHeld:
            results.append("refused")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["won"]


def test_hold_lease_renews_and_releases_even_when_the_block_fails(tmp_path):
    store = LocalStorage(tmp_path / "run")
    with pytest.raises(RuntimeError, match="training failed"):
        with hold_lease(store, ttl_s=0.4) as mine:
            first = _held(store)
            assert first.token == mine.token
            time.sleep(0.5)  # past the first expiry: renewed every ttl/4
            renewed = _held(store)
            assert renewed.token == mine.token and renewed.expires > first.expires
            assert not renewed.expired()
            raise RuntimeError("training failed")
    assert _held(store) is None


def test_hold_lease_refuses_a_second_writer_and_force_takes_over(tmp_path, capsys):
    store = LocalStorage(tmp_path / "run")
    other = lease("other", host="node-b", pid=99)
    store.acquire_lease(other)
    with pytest.raises(LeaseHeld, match="host node-b, pid 99"):
        with hold_lease(store):
            pytest.fail("the block must not run")
    assert _held(store) == other
    with hold_lease(store, force=True) as mine:
        assert _held(store).token == mine.token
    assert capsys.readouterr().err.strip() == (
        f"distill: took over the lease of {store.uri} from {other.describe()} (--force)"
    )
    assert _held(store) is None


def test_take_lease_turns_a_held_lease_into_one_spec_error(tmp_path):
    import contextlib

    store = LocalStorage(tmp_path / "run")
    store.acquire_lease(lease("other", host="node-b", pid=99))
    with pytest.raises(SpecError) as refused, contextlib.ExitStack() as held:
        take_lease(held, store, force=False, field="--output")
    message = str(refused.value)
    assert message.startswith(
        f"--output: {store.uri} is in use by another run (host node-b, pid 99"
    )
    assert "\n" not in message


def test_run_and_tune_take_force():
    parser = build_parser()
    assert parser.parse_args(["run", "--force"]).force is True
    assert parser.parse_args(["run"]).force is False
    assert parser.parse_args(["tune", "sweep.yaml", "--force"]).force is True


def test_a_lease_this_process_could_not_release_is_taken_over_by_its_next_run(tmp_path, capsys):
    """An S3 outage can fail a run and its lease release alike; the same process's next
    run (the re-run after the outage) must not wait out the TTL behind its own leftover,
    while a lease this process still holds keeps refusing a second writer."""
    store = LocalStorage(tmp_path / "run")
    real_release = store.release_lease

    def unreachable(lease):
        raise OSError("endpoint unreachable")

    store.release_lease = unreachable
    with hold_lease(store) as first:
        with pytest.raises(LeaseHeld):  # held here and now: still one writer
            with hold_lease(store):
                pass
    assert _held(store).token == first.token  # left behind, unexpired, naming this pid
    assert "could not release the lease" in capsys.readouterr().err

    store.release_lease = real_release
    with hold_lease(store) as second:
        assert _held(store).token == second.token
    assert "left by an earlier run of this process" in capsys.readouterr().err
    assert _held(store) is None  # the second run released it
