"""What a Train worker's whole process costs in memory, phase by phase, over its life.

An operator judges a worker by its resident memory, not by the bytes of the tensors it holds:
the interpreter and its libraries, the student, its optimizer state, a teacher (whole,
partitioned or memory-mapped), gathered layers and allocator slack all count. Each worker
records, from `/proc/self/status` and `/proc/self/smaps_rollup`:

- `hwm`: VmHWM, the peak resident set since the process started (load included);
- `rss`, `anon`, `file`: VmRSS now and its anonymous (heap: copies of weights) and
  file-backed parts (pages mapped from files, e.g. a memory-mapped safetensors checkpoint);
- `pss`: proportional set size, shared pages split between the processes that map them, so
  the PSS of a node's workers adds up to the node's real cost;
- `peak_anon`, `peak_pss`: the highest values sampled since the previous phase (the kernel
  keeps no high-water mark of them), by a daemon thread every `interval_s`.

`MemoryRecorder.mark(phase)` closes a phase; the worker loop marks `started` (imports done),
`teacher_loaded`, `student_built`, `engines_ready`, `first_teacher_forward` and `steady`
(the last training step). All values are bytes. With a limit (`scaling.memory_per_worker_gb`)
the recorder also stops the worker, with one line naming the phase and the measured RSS, once
the process's RSS exceeds it: Ray's `memory` resource only reserves.
"""

from __future__ import annotations

import threading
import time

PHASES = (
    "started",
    "teacher_loaded",
    "student_built",
    "engines_ready",
    "first_teacher_forward",
    "steady",
)
_STATUS = {"VmHWM": "hwm", "VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}


class MemoryLimitExceeded(RuntimeError):
    """The worker's resident memory went above `scaling.memory_per_worker_gb`."""


def read_memory(pid: int | str = "self") -> dict[str, int]:
    """{hwm, rss, anon, file, pss} of a process in bytes (pss 0 where smaps_rollup is not
    readable)."""
    out = dict.fromkeys((*_STATUS.values(), "pss"), 0)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in _STATUS:
                out[_STATUS[key]] = int(line.split()[1]) * 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return out


class MemoryRecorder:
    """Phase marks of this process's memory, with peaks sampled between them."""

    def __init__(self, *, interval_s: float = 0.2, limit_bytes: int | None = None):
        self.interval_s = interval_s
        self.limit_bytes = limit_bytes
        self.phases: list[dict] = []
        self.exceeded: dict | None = None  # the first sample above the limit
        self._phase = PHASES[0]
        self._peak_anon = self._peak_pss = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distill-memory", daemon=True)

    def start(self) -> MemoryRecorder:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def mark_once(self, phase: str) -> None:
        """`mark(phase)` unless this phase was marked already (a step hook)."""
        if not any(p["phase"] == phase for p in self.phases):
            self.mark(phase)

    def mark(self, phase: str) -> dict:
        """Close `phase`: the memory now, and the peaks sampled since the previous mark.
        Raises `MemoryLimitExceeded` when the process went above the limit meanwhile."""
        now = self._sample()
        with self._lock:
            record = {
                "phase": phase,
                "time": round(time.time(), 3),  # for the run's phase record (jobs/phases.py)
                **now,
                "peak_anon": max(self._peak_anon, now["anon"]),
                "peak_pss": max(self._peak_pss, now["pss"]),
            }
            self._peak_anon = self._peak_pss = 0
            self._phase = _next_phase(phase)
        self.phases.append(record)
        self.check()
        return record

    def check(self) -> None:
        """Raise `MemoryLimitExceeded` (one line: phase, RSS, limit) once a sample was above
        the limit; cheap enough for every training step."""
        if self.exceeded is not None:
            e = self.exceeded
            raise MemoryLimitExceeded(
                f"scaling.memory_per_worker_gb: this worker's resident memory reached "
                f"{e['rss'] / 2**30:.2f} GiB during {e['phase']}, above the limit of "
                f"{self.limit_bytes / 2**30:.2f} GiB"
            )

    def summary(self) -> dict:
        """The record a report keeps: every phase, and the whole-life peaks."""
        now = read_memory()
        return {
            "phases": self.phases,
            "peak_rss": now["hwm"],
            "peak_anon": max([now["anon"], *(p["peak_anon"] for p in self.phases)]),
            "peak_pss": max([now["pss"], *(p["peak_pss"] for p in self.phases)]),
        }

    def _sample(self) -> dict[str, int]:
        now = read_memory()
        with self._lock:
            self._peak_anon = max(self._peak_anon, now["anon"])
            self._peak_pss = max(self._peak_pss, now["pss"])
            if (
                self.limit_bytes is not None
                and self.exceeded is None
                and now["rss"] > self.limit_bytes
            ):
                self.exceeded = {"phase": self._phase, "rss": now["rss"]}
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except OSError:  # the process is exiting
                return


def _next_phase(phase: str) -> str:
    """The phase that runs after `phase` closes (what a sample is attributed to)."""
    if phase in PHASES and phase != PHASES[-1]:
        return PHASES[PHASES.index(phase) + 1]
    return phase
