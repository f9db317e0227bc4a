"""The worker's whole-process memory record: procfs values, phases with the peaks sampled
between them, and the one-line stop above `scaling.memory_per_worker_gb`."""

from __future__ import annotations

import time

import pytest
import torch

from distill.cluster.worker_memory import MemoryLimitExceeded, MemoryRecorder, read_memory

pytestmark = pytest.mark.unit


def test_read_memory_is_this_process():
    now = read_memory()
    assert now["hwm"] >= now["rss"] > 0
    assert now["anon"] + now["file"] <= now["rss"]
    assert 0 < now["pss"] <= now["rss"] + 2**20


def test_phases_keep_the_peak_a_temporary_reached_between_marks():
    # Compared with the process's own reading while the temporary is alive, not with the
    # `started` mark: in a long test process other threads free memory meanwhile (CI saw the
    # heap 20 MiB lower after the allocation than before it).
    recorder = MemoryRecorder(interval_s=0.01).start()
    try:
        recorder.mark("started")
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB of heap, touched
        alive = read_memory()["anon"]
        deadline = time.monotonic() + 5.0  # sampled by the thread while alive
        while recorder._peak_anon < alive - 8 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.01)
        del big
        time.sleep(0.05)
        record = recorder.mark("teacher_loaded")
    finally:
        recorder.stop()
    assert [p["phase"] for p in recorder.phases] == ["started", "teacher_loaded"]
    assert record["anon"] <= alive - 32 * 2**20  # the temporary is gone now ...
    assert record["peak_anon"] >= alive - 8 * 2**20  # ... and its peak is kept
    summary = recorder.summary()
    assert summary["peak_anon"] >= record["peak_anon"]
    assert summary["peak_rss"] >= record["rss"]


def test_mark_once_marks_a_phase_one_time():
    recorder = MemoryRecorder()
    recorder.mark_once("first_teacher_forward")
    recorder.mark_once("first_teacher_forward")
    assert [p["phase"] for p in recorder.phases] == ["first_teacher_forward"]


def test_a_limit_below_the_process_stops_it_naming_the_phase():
    recorder = MemoryRecorder(limit_bytes=2**20)  # 1 MiB: every Python process is above
    with pytest.raises(MemoryLimitExceeded) as err:
        recorder.mark("started")  # the mark's own sample is attributed to `started`
    message = str(err.value)
    assert message.startswith("scaling.memory_per_worker_gb:")
    assert "during started" in message and "above the limit of 0.00 GiB" in message
    assert "\n" not in message
