"""`distill report`'s worker-memory table, from the per-rank phase record in report.json."""

from __future__ import annotations

import pytest

from distill.jobs.report import memory_lines

pytestmark = pytest.mark.unit

GIB = 2**30


def _worker(rss: list[float], peak: float) -> dict:
    phases = ["started", "teacher_loaded", "student_built"]
    return {
        "phases": [{"phase": p, "rss": r * GIB} for p, r in zip(phases, rss)],
        "peak_rss": peak * GIB,
        "peak_anon": peak / 2 * GIB,
        "peak_pss": peak * 0.8 * GIB,
    }


def test_memory_table_has_a_column_per_rank_and_the_peaks():
    placement = {
        "partition": "zero3",
        "dtype": "bf16",
        "memory": [_worker([0.5, 1.5, 1.75], 2.0), _worker([0.5, 1.25], 3.0)],
    }
    lines = memory_lines(placement)
    assert lines[1] == "teacher zero3, bf16:"
    header, *rows = lines[2:]
    assert header.split() == ["worker", "memory", "(GiB,", "RSS)", "rank", "0", "rank", "1"]
    table = {r.split("  ")[0]: r.split()[-2:] for r in rows}
    assert table["teacher_loaded"] == ["1.50", "1.25"]
    assert table["student_built"] == ["1.75", "-"]  # rank 1 recorded no such phase
    assert table["peak RSS"] == ["2.00", "3.00"]
    assert table["peak PSS"] == ["1.60", "2.40"]


def test_no_record_no_table():
    assert memory_lines(None) == []
    assert memory_lines({"partition": "replicate"}) == []
