"""What the driver hands the Ray Train workers, and where a pipeline's stage outputs live.

A job is an ordered list of stages (one for a plain job). All of them run in ONE Ray Train
run (one worker group): the workers train stage after stage, each with its own DeepSpeed
engine. A stage that later stages read (as teacher, `teacher.name: stage:NAME`, or as the
student they carry on) leaves its export in the run's storage:

    <run>/stages/<name>/config.yaml   the stage's resolved spec
    <run>/stages/<name>/metrics.jsonl the stage's logged steps
    <run>/stages/<name>/student/      the stage's exported model (HF folder)
    <run>/stages/<name>/done.json     written last: {"spec": ..., "student": ...}

The last stage's export travels in its final Ray Train checkpoint instead (the driver copies
it to `<run>/student`). Importing this module is cheap (no Ray, no DeepSpeed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from distill.cluster.run_files import STAGES_DIR, STUDENT_DIR
from distill.cluster.storage import Storage
from distill.core.spec import S3Spec
from distill.core.stages import Stage

DONE_FILE = "done.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class WorkerInputs:
    """Everything the worker loop reads (it reads nothing else).

    start: index of the first stage to run (the ones before are done, their exports in
    storage); attempt: an id of this driver invocation, so a restarted worker group resumes
    at its own latest checkpoint while a new invocation starts at `start`;
    st_teacher: the sentence-transformers folder of the root teacher (export layout);
    teacher_cache: the teacher-output cache a sweep built for this single-stage job;
    teacher_service: the Ray Serve deployment that runs the teacher (`teacher.placement:
    service`), started by the driver or its sweep;
    damaged: names of the run's checkpoints the driver found damaged (`checkpoint_<time>`):
    when Ray restores one of them, the workers resume from `resume_from` instead, the
    newest intact checkpoint (relative to the run folder; None: none left, from step 0);
    fence: the lease the driver (or its sweep) writes the run folder under: every write a
    worker makes there checks it first (cluster/lease.py), None for a job without one."""

    stages: tuple[Stage, ...]
    run_uri: str
    s3: S3Spec
    start: int = 0
    attempt: str = ""
    st_teacher: str | None = None
    teacher_cache: dict | None = None
    teacher_service: object | None = None  # `cluster.teacher_service.ServiceRef` (service)
    damaged: tuple[str, ...] = ()
    resume_from: str | None = None
    fence: object | None = None  # `cluster.lease.FenceRef`

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    def index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)


def stage_dir(name: str) -> str:
    return f"{STAGES_DIR}/{name}"


def stage_student(name: str) -> str:
    """Where a (non-final) stage's export lives, relative to the run's storage."""
    return f"{stage_dir(name)}/{STUDENT_DIR}"


def stage_done(storage: Storage, plan: Stage) -> dict | None:
    """The stage's done marker when it finished with this very spec (its `training` or
    `data` changed, e.g. more steps: None, it runs again)."""
    path = f"{stage_dir(plan.name)}/{DONE_FILE}"
    if not storage.exists(path):
        return None
    try:
        done = json.loads(storage.read_text(path))
    except ValueError:
        return None  # a damaged marker: the stage runs again
    if not isinstance(done, dict) or done.get("spec") != plan.spec.model_dump(mode="json"):
        return None
    return done


def mark_done(storage: Storage, plan: Stage, **facts) -> None:
    """Record that `plan` finished (written after its outputs, so it never lies)."""
    payload = {"spec": plan.spec.model_dump(mode="json"), **facts}
    storage.write_text(f"{stage_dir(plan.name)}/{DONE_FILE}", json.dumps(payload))
