"""`distill run`: validate, train on Ray, export, evaluate, report.

distill run [CONFIG.yaml] [--set key=value ...] [--output DIR] [--smoke]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from distill.cluster.cache_store import CacheRequest, cache_summary, resolve_cache
from distill.cluster.checkpoints import newest_intact
from distill.cluster.deepspeed_config import deepspeed_config
from distill.cluster.job_data import train_eval_texts
from distill.cluster.lease import check_fence, fence_of
from distill.cluster.pipeline import (
    WorkerInputs,
    mark_done,
    stage_dir,
    stage_done,
    stage_student,
)
from distill.cluster.run_files import DIVERGED_FILE, PROBE_FILE, STATE_FILE, STUDENT_DIR
from distill.cluster.storage import Storage, is_s3_uri
from distill.cluster.tracking import with_tracking
from distill.cluster.worker_env import in_job_working_dir
from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import dump_spec
from distill.core.stages import Stage, plan_stages
from distill.core.teacher import is_sentence_transformer, resolve_teacher
from distill.jobs.curves import write_curves
from distill.jobs.driver import Folder, drive, start_cluster, start_service, stop_service
from distill.jobs.model_card import write_model_card
from distill.jobs.phases import Timeline
from distill.jobs.preflight import check_storage, preflight_stages
from distill.jobs.report import build_report
from distill.jobs.run_folder import (
    CONFIG_FILE,
    REPORT_FILE,
    check_same_as_existing,
)

DEEPSPEED_FILE = "deepspeed.json"

# Fields that change the trained model's shape or meaning: resuming with others is refused.
_RESUME_KEYS = ("teacher", "student", "task", "objective", "stages")


def run_dir_for(spec: JobSpec, output: str | None) -> Path | str:
    if is_s3_uri(output or spec.output.dir):  # an S3 URI is no Path: "s3://" would lose a "/"
        return (output or f"{spec.output.dir.rstrip('/')}/{spec.output.name}").rstrip("/")
    return Path(output) if output else Path(spec.output.dir) / spec.output.name


def _model_shape(key: str, value):
    """The part of a spec section that decides what the trained model is. A stage's
    `training` and `data` may change between invocations (e.g. more steps): Ray resumes;
    so may where the teacher lives (`teacher.placement`, `dtype`, `zero3`): only its name
    decides what is distilled."""
    if key == "teacher" and isinstance(value, dict):
        return value.get("name")
    if key == "stages" and value:
        return [
            {k: v for k, v in stage.items() if k not in ("training", "data")} for stage in value
        ]
    return value or None


def _check_resumable(storage: Storage, spec: JobSpec) -> None:
    check_same_as_existing(
        storage,
        CONFIG_FILE,
        spec.model_dump(mode="json"),
        _RESUME_KEYS,
        "run",
        "use a new output.name (or --output)",
        _model_shape,
    )


class TrainingDiverged(RuntimeError):
    """The run stopped because its loss or gradient norm stayed non-finite; its newest
    checkpoint is the last finite state and nothing was exported."""


def diverged_line(record: dict, checkpoint) -> str:
    stage = f"stage {record['stage']}, " if "stage" in record else ""
    kept = (
        f"the newest checkpoint ({checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}) is the "
        "last finite state"
        if checkpoint is not None
        else "no checkpoint was written"
    )
    if "spike" in record:
        spike = record["spike"]
        return (
            f"training diverged at {stage}step {record['step']}: the loss stayed above "
            f"{spike['factor']:g}x its running median ({spike['median']:.4g}) for "
            f"{spike['steps']} consecutive steps, {', '.join(spike['parts'])} exploding "
            f"(training.stop_on_spike); {kept.replace('finite', 'healthy')}; nothing was "
            "exported (lower training.learning_rate or the loss weights)"
        )
    return (
        f"training diverged at {stage}step {record['step']}: {', '.join(record['nonfinite'])} "
        f"not finite for {record['nonfinite_steps']} consecutive steps "
        f"(training.stop_after_nonfinite); {kept}; nothing was exported (lower "
        "training.learning_rate or the loss weights)"
    )


def _run_stages(
    plans: tuple[Stage, ...],
    storage: Storage,
    teacher_cache: dict | None,
    callbacks,
    teacher_service=None,
):
    """Run the stages that are not done yet, all in one Ray Train run; the final stage's
    final checkpoint. A finished job (every stage done with this very spec) runs nothing.
    Damaged checkpoints (a file truncated, missing or altered) are passed over, with one
    line saying so: the workers resume from the newest intact one instead."""
    import ray.train

    from distill.cluster.launch import fit  # imports Ray: only after every check has passed

    checkpoints = newest_intact(storage)
    notice = checkpoints.notice("resuming from", none_left="starting from step 0")
    if notice:
        print(notice, file=sys.stderr, flush=True)
    damaged = tuple(checkpoint["name"] for checkpoint, _ in checkpoints.damaged)
    start = next(
        (i for i, plan in enumerate(plans) if stage_done(storage, plan) is None), len(plans)
    )
    if start == len(plans):
        final = stage_done(storage, plans[-1])["checkpoint"]
        if os.path.basename(final.rstrip("/")) not in damaged:
            return ray.train.Checkpoint(final, filesystem=storage.ray_storage()[1])
        start = len(plans) - 1  # its final checkpoint is damaged: train its end again
    if len(plans) > 1:
        for plan in plans[start:]:
            storage.write_text(f"{stage_dir(plan.name)}/{CONFIG_FILE}", dump_spec(plan.spec))
    root = plans[0].spec.teacher.name
    inputs = WorkerInputs(
        stages=plans,
        run_uri=storage.uri,
        s3=plans[0].spec.output.s3,
        start=start,
        attempt=uuid.uuid4().hex,
        st_teacher=resolve_teacher(root) if is_sentence_transformer(root) else None,
        teacher_cache=teacher_cache,
        teacher_service=teacher_service,
        damaged=damaged,
        resume_from=checkpoints.intact["path"] if checkpoints.intact else None,
        fence=fence_of(storage.uri),  # the run's lease, or its sweep's
    )
    if storage.exists(DIVERGED_FILE):  # an earlier invocation's; this one starts afresh
        storage.delete(DIVERGED_FILE)
    try:
        result = fit(inputs, storage, callbacks=callbacks)
    except Exception:
        check_fence(inputs.fence, inputs.s3)  # fenced out: that is the one line to print
        raise
    if getattr(result, "error", None):
        check_fence(inputs.fence, inputs.s3)
        raise result.error
    if storage.exists(DIVERGED_FILE):
        record = json.loads(storage.read_text(DIVERGED_FILE))
        if record.get("attempt") == inputs.attempt:
            raise TrainingDiverged(diverged_line(record, result.checkpoint))
    mark_done(storage, plans[-1], checkpoint=result.checkpoint.path)
    return result.checkpoint


@dataclass(frozen=True)
class PreparedRun:
    """A run whose every check passed, nothing written yet: its resolved spec and stages
    (each with its teacher placement), its folder, and the teacher-output cache it reads
    (`cache_request` to find or build, or one a sweep built: `teacher_cache`; or why the
    teacher runs live: `cache_bypass`)."""

    spec: JobSpec
    stages: list[Stage]
    folder: Folder
    cache_request: CacheRequest | None
    teacher_cache: dict | None
    cache_bypass: str | None
    teacher_service: object | None = None  # a sweep's deployment (`teacher.placement: service`)


def prepare_run(
    spec: JobSpec,
    output: str | None = None,
    *,
    teacher_cache: dict | None = None,
    cache_bypass: str | None = None,
    teacher_service=None,
) -> PreparedRun:
    """Every check of `distill run`, before anything is written and before Ray: the spec
    and its stages (preflight), the folder (reachable, same model as a run already there),
    the teacher-output cache."""
    spec = in_job_working_dir(spec)  # a submitted job: its bundled files on this node
    stages = preflight_stages(spec)
    field = "--output" if output else "output.dir"
    storage = check_storage(run_dir_for(spec, output), spec, field)
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"name": storage.name})})
    spec = with_tracking(spec, storage)
    stages = [
        replace(s, spec=s.spec.model_copy(update={"tracking": spec.tracking})) for s in stages
    ]
    if len(stages) == 1:
        spec = stages[0].spec.model_copy(update={"output": spec.output})
        stages = [replace(stages[0], spec=spec)]
    _check_resumable(storage, spec)
    if teacher_cache is not None and len(stages) > 1:
        raise SpecError("stages: the teacher-output cache serves single-stage jobs only")
    request = None
    if teacher_cache is None and cache_bypass is None:  # a sweep trial brings its own
        request, cache_bypass = _cache_request(spec, stages, storage)
    folder = Folder(
        storage, field, CONFIG_FILE, dump_spec(spec), lease_ttl_s=spec.output.lease_ttl_s
    )
    return PreparedRun(spec, stages, folder, request, teacher_cache, cache_bypass, teacher_service)


def run_job(
    spec: JobSpec,
    output: str | None = None,
    *,
    teacher_cache: dict | None = None,
    cache_bypass: str | None = None,
    teacher_service=None,
    callbacks: list | None = None,
    force: bool = False,
    lease: bool = True,
    on_checked: Callable[[], None] | None = None,
) -> dict:
    """Run one distillation job (all its stages) end to end and return its report
    (`jobs/driver.py`: prepare, lease, folder, cluster, launch, report).

    teacher_cache: a cache `distill.cluster.cache_store.prepare_cache` found or built for this
    single-stage job (a sweep shares one across trials), or `cache_bypass` says why the
    teacher runs on the fly (both land in the report); teacher_service: a sweep's teacher
    deployment (`teacher.placement: service`; else the run starts its own); callbacks: extra Ray Train
    callbacks, e.g. Tune's `TuneReportCallback` when the job is a sweep trial.
    The run holds its folder's lease throughout (a second writer is refused with a
    SpecError naming the holder, before Ray starts); `force` takes over another writer's
    lease; lease=False for sweep trials, whose sweep holds the lease of the whole folder;
    on_checked: called once every check has passed, before anything is written."""
    started = time.perf_counter()
    timeline = Timeline()  # from this process's start (jobs/phases.py)
    timeline.mark("startup")
    run = prepare_run(
        spec,
        output,
        teacher_cache=teacher_cache,
        cache_bypass=cache_bypass,
        teacher_service=teacher_service,
    )
    timeline.mark("preflight")
    return drive(
        run.folder,
        lambda: _launch_run(run, started, callbacks, timeline),
        lease=lease,
        force=force,
        on_checked=on_checked,
    )


def _cache_request(
    spec: JobSpec, stages: list[Stage], storage: Storage
) -> tuple[CacheRequest | None, str | None]:
    """The teacher-output cache this run reads (`teacher.cache`), found or to be built; or
    why the teacher runs live. Before Ray: a `required` cache that is missing, or a location
    that cannot be reached, is a SpecError."""
    mode = spec.teacher.cache.mode
    if mode == "off":
        return None, None
    if len(stages) > 1 or stages[0].kind != "distill":
        reason = "pipelines and finetune/pretrain stages run the teacher live"
        if mode == "required":
            raise SpecError(f"teacher.cache: mode required, but {reason}")
        return None, reason
    return resolve_cache(stages[0].spec, storage)


def _launch_run(
    run: PreparedRun, started: float, callbacks: list | None, timeline: Timeline
) -> dict:
    """The cluster and the cache, every stage not done yet, then the report (`timeline`
    marks each phase)."""
    storage = run.folder.storage
    for stage in run.stages:  # notes only once every check passed and the folder is made
        where = f"stage {stage.name}: " if len(run.stages) > 1 else ""
        workers = run.spec.scaling.num_workers
        print(f"[distill] {where}{stage.placement.describe(workers)}", flush=True)
    teacher_cache, service, started_service = run.teacher_cache, run.teacher_service, None
    start_cluster(run.spec)  # Ray
    timeline.mark("ray")
    if run.cache_request is not None:
        teacher_cache = start_cluster(run.spec, run.cache_request)
    if service is None and run.spec.teacher.placement == "service":
        service = started_service = start_service(run.spec)
    timeline.mark("teacher_cache")
    try:
        plans = plan_stages(run.stages)
        for plan in plans:  # what each DeepSpeed engine is given, next to the results
            where = f"{stage_dir(plan.name)}/" if len(plans) > 1 else ""
            config = deepspeed_config(plan.spec, plan.spec.training.steps)
            storage.write_text(f"{where}{DEEPSPEED_FILE}", json.dumps(config, indent=2))
        checkpoint = _run_stages(plans, storage, teacher_cache, callbacks, service)
        timeline.mark("final_checkpoint")
        report = _report_run(run, plans, checkpoint, started, timeline)
        if service is not None:
            from distill.cluster.teacher_service import service_record

            report["teacher"]["placement"]["service"] = service_record(service)
    finally:
        stop_service(started_service)
    report["teacher_cache"] = cache_summary(teacher_cache, run.cache_bypass)
    write_curves(storage)
    timeline.mark("report")
    memory = (report["teacher"].get("placement") or {}).get("memory")
    report["run"]["phases"] = timeline.record(memory)
    storage.write_text(REPORT_FILE, json.dumps(report, indent=2))  # last: the run is done
    return report


def _report_run(
    run: PreparedRun,
    plans: tuple[Stage, ...],
    checkpoint,
    started: float,
    timeline: Timeline | None = None,
) -> dict:
    """The run's report from its final checkpoint; writes metrics.jsonl and the export
    (with its model card) into the run folder."""
    spec, storage = run.spec, run.folder.storage
    final = plans[-1]
    final_spec = final.spec.model_copy(update={"output": spec.output})
    with contextlib.ExitStack() as scratch:
        folder = Path(scratch.enter_context(checkpoint.as_directory()))  # S3: a local download
        probe = torch.load(folder / PROBE_FILE)
        state = json.loads((folder / STATE_FILE).read_text())
        storage.write_text("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state["history"]))
        _, eval_rows = train_eval_texts(final_spec)
        teacher_dir = resolve_teacher(final_spec.teacher.name)
        if final.teacher_stage is not None:
            local = scratch.enter_context(tempfile.TemporaryDirectory(prefix="distill-teacher-"))
            teacher_dir = str(storage.get_dir(stage_student(final.teacher_stage), local))
        report = build_report(
            final_spec,
            storage.uri,
            eval_rows,
            state,
            probe,
            f"s3://{checkpoint.path}" if is_s3_uri(storage.uri) else checkpoint.path,
            started,
            student_dir=folder / STUDENT_DIR,
            teacher_dir=teacher_dir,
            stages=[
                {"name": p.name, "kind": p.kind, "steps": p.spec.training.steps} for p in plans
            ],
            timeline=timeline,
        )
        if report["teacher"]["placement"] is not None:  # what preflight decided, and why
            report["teacher"]["placement"]["preflight"] = _preflight_record(run.stages[-1])
        # The export with its model card (made from the report) goes to the run in one
        # put_dir, so its manifest covers the card; the checkpoint's copy stays as it was.
        staging = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="distill-out-")))
        shutil.copytree(folder / STUDENT_DIR, staging / STUDENT_DIR)
        write_model_card(staging / STUDENT_DIR, report, final_spec)
        storage.put_dir(staging / STUDENT_DIR, STUDENT_DIR)
    if timeline is not None:
        timeline.mark("export")
    return report


def _preflight_record(stage: Stage) -> dict:
    """The teacher placement preflight chose for `stage`, why, and its memory estimate."""
    decided = stage.placement
    record = {
        "partition": decided.partition,
        "reason": decided.reason,
        "worker_memory_bytes": decided.worker_memory_bytes,
    }
    if decided.estimate is not None:
        record["estimated_peak_bytes"] = decided.estimate.total
        record["estimate_terms"] = asdict(decided.estimate)
    return record
