"""Where the wall time of one `distill run` goes, phase by phase, from the moment the
command's process started to the report written: the `run.phases` block of `report.json`
and one line of the printed summary.

The driver marks its own steps (`Timeline.mark`); the workers' steps come from their
phase record (cluster/worker_memory.py: each mark carries the time it was taken), the
slowest rank for each. Phases, in order:

    startup          process start -> the command's first own line (Python, imports, spec)
    preflight        every check, before anything is written
    ray              Ray joined or started
    teacher_cache    the teacher-output cache found or built (0 without one)
    workers          the Ray Train worker group placed and started (imports on the workers)
    load             teacher, student, data and DeepSpeed engines set up
    first_step       from the engines to the first step's teacher forward
    train            first step to last step (checkpoints included)
    final_checkpoint the last checkpoint with its export, until the Train run returns
    evaluate         teacher and student scored on the held-out rows, throughput
    latency          serving latency (ONNX export and timed rounds; encoders)
    export           the student's export and model card copied into the run folder
    report           the rest: curves, the report itself

Times are Unix seconds; workers on other hosts use their own clocks (a skew of seconds
shifts the boundary between `workers` and `load`, never the total).
"""

from __future__ import annotations

import os
import time

DRIVER_PHASES = ("startup", "preflight", "ray", "teacher_cache")
WORKER_MARKS = (  # (phase ended by the mark, the workers' memory phase that marks it)
    ("workers", "started"),
    ("load", "engines_ready"),
    ("first_step", "first_teacher_forward"),
    ("train", "steady"),
)
# The latency rounds come before the evaluation, which reuses their PyTorch throughput.
END_PHASES = ("final_checkpoint", "latency", "evaluate", "export", "report")


def process_start_time() -> float:
    """When this process started (Unix seconds), from /proc; now where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


class Timeline:
    """The driver's marks: `mark(phase)` ends `phase` now (phases in the module's order;
    one not marked lasts 0 s)."""

    def __init__(self, start: float | None = None) -> None:
        self.start = process_start_time() if start is None else start
        self.marks: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.time()

    def record(self, worker_memory: list[dict] | None) -> dict:
        """{"phases": {phase: seconds}, "command_to_first_step_s", "last_step_to_report_s",
        "train_fraction", "total_s"}: every phase in order, the workers' from
        `worker_memory` (per rank: the `phases` of cluster/worker_memory.py)."""
        ends = self._ends(worker_memory or [])
        phases, previous = {}, self.start
        for phase in (*DRIVER_PHASES, *(p for p, _ in WORKER_MARKS), *END_PHASES):
            end = ends.get(phase)
            if end is None or end < previous:
                end = previous  # not marked (or out of order across clocks): 0 s
            phases[phase] = round(end - previous, 2)
            previous = end
        total = previous - self.start
        first = ends.get("first_step")
        last = ends.get("train")
        return {
            "phases": phases,
            "total_s": round(total, 2),
            "command_to_first_step_s": None if first is None else round(first - self.start, 2),
            "last_step_to_report_s": None if last is None else round(previous - last, 2),
            "train_fraction": round(phases["train"] / total, 3) if total > 0 else None,
        }

    def _ends(self, worker_memory: list[dict]) -> dict[str, float]:
        ends = dict(self.marks)
        for phase, mark in WORKER_MARKS:
            times = [_mark_time(rank, mark) for rank in worker_memory]
            times = [t for t in times if t is not None]
            if times:
                ends[phase] = max(times)  # the slowest rank gates the step
        return ends


def _mark_time(rank: dict | None, mark: str) -> float | None:
    """When `rank` took `mark` (the first time, the last for `steady`: one per stage)."""
    hits = [p.get("time") for p in (rank or {}).get("phases", []) if p.get("phase") == mark]
    hits = [t for t in hits if t is not None]
    if not hits:
        return None
    return hits[-1] if mark == "steady" else hits[0]


def phase_line(record: dict | None) -> str | None:
    """`time: 100 s = startup 9, preflight 1, ray 6, ..., train 40 (40%), ...`: the phases
    of at least half a second, for the printed summary."""
    if not record:
        return None
    parts = [
        f"{name.replace('_', ' ')} {seconds:.0f}"
        + (
            f" ({record['train_fraction']:.0%})"
            if name == "train" and record["train_fraction"]
            else ""
        )
        for name, seconds in record["phases"].items()
        if seconds >= 0.5
    ]
    return f"time: {record['total_s']:.0f} s = " + ", ".join(parts)
