"""Integration (issue 33), end to end with real processes: a driver paused past its lease
(SIGSTOP) while its Ray workers go on training; a second `distill run` into the same folder
takes the lease over and resumes; the paused driver, resumed (SIGCONT), stops with one line
and exit 1; the second run finishes, and no checkpoint begun after the takeover was left by
the first writer. Unit-level cases of every fencing path are in
tests/unit/cluster/test_fencing.py; bench/faults.py runs this and the other faults with
numbers."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest
from helpers.fault_runs import (
    CHECKPOINT_EVERY,
    JOB,
    STEPS,
    Run,
    checkpoint_steps,
    reported_steps,
    stale_checkpoints,
    wait_for,
)

from distill.cluster.storage import LocalStorage

TTL_S = 6.0


@pytest.mark.slow(
    reason=(
        "two real `distill run` processes, each with its own local Ray and 2 workers, one "
        "paused past its lease: about 4 minutes on 2 cores"
    )
)
def test_a_paused_writer_stops_and_the_run_that_took_over_finishes(tmp_path):
    uri = str(tmp_path / "run")
    storage = LocalStorage(uri)
    settings = [*JOB, f"output.lease_ttl_s={TTL_S}"]
    first = Run(uri, settings, tmp_path / "logs", "first")
    try:
        wait_for(lambda: len(checkpoint_steps(storage)) >= 1, 600, first)
        first.signal(signal.SIGSTOP)  # the driver only: its controller and workers go on
        time.sleep(TTL_S + 2)
        second = Run(uri, settings, tmp_path / "logs", "second")
        wait_for(lambda: "took over the lease" in second.stderr(), 300, second)
        held, _ = storage.read_lease()
        generation, taken_at = held.generation, held.started  # the takeover, this host's clock
        assert held.pid == second.pid and generation == 2
        wait_for(lambda: len(reported_steps(storage)) > 0, 300, second)
        first.signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 1
        assert second.wait(timeout=600) == 0, second.stderr()[-3000:]
    finally:
        first.kill_group()
    (took_over,) = [line for line in second.error_lines() if "took over the lease" in line]
    host = socket.gethostname()
    assert took_over.startswith(
        f"distill: took over the lease of {uri} from host {host}, pid {first.pid}, since "
    ) and took_over.endswith(" (expired, or its process is gone)")
    last = first.stderr().strip().splitlines()[-1]
    assert re.fullmatch(
        rf"distill: error: lost the lease on {re.escape(uri)} to "
        rf"{re.escape(host)}/{second.pid} at \S+ \S+ UTC; stopped writing",
        last,
    ), first.stderr()[-3000:]
    assert stale_checkpoints(storage, taken_at, generation) == []
    assert reported_steps(storage)[-1] == STEPS
    assert checkpoint_steps(storage)[0] == STEPS
    assert max(checkpoint_steps(storage)) - min(checkpoint_steps(storage)) >= CHECKPOINT_EVERY
