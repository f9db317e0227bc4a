"""The run's wall time by phase (jobs/phases.py): driver marks and the workers' phase
record combine into consecutive phases that add up to the whole command."""

from __future__ import annotations

import os
import time

import pytest

from distill.jobs.phases import Timeline, phase_line, process_start_time


def _worker(started, engines, first, steady, *, stages=1):
    phases = [
        {"phase": "started", "time": started},
        {"phase": "teacher_loaded", "time": engines - 1},
        {"phase": "engines_ready", "time": engines},
        {"phase": "first_teacher_forward", "time": first},
    ]
    phases += [{"phase": "steady", "time": steady - 10 * (stages - 1 - i)} for i in range(stages)]
    return {"phases": phases}


def test_phases_are_consecutive_and_add_up_to_the_command():
    timeline = Timeline(start=1000.0)
    timeline.marks = {
        "startup": 1008.0,
        "preflight": 1009.0,
        "ray": 1015.0,
        "teacher_cache": 1015.0,  # no cache: 0 s
        "final_checkpoint": 1080.0,
        "latency": 1090.0,  # before the evaluation, which reuses its PyTorch throughput
        "evaluate": 1100.0,
        "export": 1102.0,
        "report": 1103.0,
    }
    # Rank 1 is slower to load: it gates the first step.
    workers = [_worker(1020.0, 1027.0, 1028.0, 1076.0), _worker(1021.0, 1030.0, 1031.0, 1077.0)]
    record = timeline.record(workers)
    assert record["phases"] == {
        "startup": 8.0,
        "preflight": 1.0,
        "ray": 6.0,
        "teacher_cache": 0.0,
        "workers": 6.0,
        "load": 9.0,
        "first_step": 1.0,
        "train": 46.0,
        "final_checkpoint": 3.0,
        "latency": 10.0,
        "evaluate": 10.0,
        "export": 2.0,
        "report": 1.0,
    }
    assert record["total_s"] == pytest.approx(sum(record["phases"].values())) == 103.0
    assert record["command_to_first_step_s"] == 31.0
    assert record["last_step_to_report_s"] == 26.0
    assert record["train_fraction"] == pytest.approx(46 / 103, abs=1e-3)
    line = phase_line(record)
    assert line.startswith("time: 103 s = startup 8, preflight 1, ray 6, workers 6, load 9, ")
    assert "train 46 (45%)" in line and "teacher cache" not in line


def test_missing_or_skewed_marks_last_zero_and_pipelines_end_at_the_last_stage():
    timeline = Timeline(start=1000.0)
    timeline.marks = {"startup": 1005.0, "preflight": 1006.0, "report": 1200.0}
    # A worker clock 30 s behind the driver: its marks precede the driver's; clamped to 0 s.
    skewed = _worker(990.0, 995.0, 996.0, 1150.0, stages=3)
    record = timeline.record([skewed])
    assert record["phases"]["workers"] == record["phases"]["load"] == 0.0
    assert record["phases"]["train"] == 144.0  # to the last stage's steady mark
    assert record["total_s"] == 200.0
    assert Timeline(start=1.0).record(None)["command_to_first_step_s"] is None


def test_the_process_start_time_is_read_from_proc():
    started = process_start_time()
    assert time.time() - 3600 * 24 < started <= time.time()
    if os.path.exists("/proc/self/stat"):
        assert time.time() - started < 3600 * 24  # this pytest process, not the epoch
