"""`distill run`: validate, train on Ray, export, evaluate, report.

distill run [CONFIG.yaml] [--set key=value ...] [--output DIR] [--smoke]
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
import yaml

from distill.cluster.job_data import train_eval_texts
from distill.cluster.run_files import PROBE_FILE, STAGES_DIR, STATE_FILE, STUDENT_DIR, TRAIN_DIR
from distill.cluster.storage import LocalStorage, is_s3_uri
from distill.cluster.teacher_cache import cache_summary
from distill.cluster.worker_env import in_job_working_dir
from distill.core.spec import JobSpec, SpecError, dump_spec
from distill.core.stages import Stage
from distill.core.teacher import is_sentence_transformer, resolve_teacher
from distill.jobs.generative_report import build_generative_report
from distill.jobs.preflight import check_storage, preflight_stages
from distill.jobs.report import build_report

CONFIG_FILE = "config.yaml"
# Fields that change the trained model's shape or meaning: resuming with others is refused.
_RESUME_KEYS = ("teacher", "student", "task", "objective", "stages")


def run_dir_for(spec: JobSpec, output: str | None) -> Path | str:
    if is_s3_uri(output or spec.output.dir):  # an S3 URI is no Path: "s3://" would lose a "/"
        return (output or f"{spec.output.dir.rstrip('/')}/{spec.output.name}").rstrip("/")
    return Path(output) if output else Path(spec.output.dir) / spec.output.name


def _model_shape(key: str, value):
    """The part of a spec section that decides what the trained model is. A stage's
    `training` and `data` may change between invocations (e.g. more steps): Ray resumes."""
    if key == "stages" and value:
        return [
            {k: v for k, v in stage.items() if k not in ("training", "data")} for stage in value
        ]
    return value or None


def _check_resumable(storage: LocalStorage, spec: JobSpec) -> None:
    if not storage.exists(CONFIG_FILE):
        return
    try:
        previous = yaml.safe_load(storage.read_text(CONFIG_FILE)) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        previous = None
    if not isinstance(previous, dict):
        raise SpecError(
            f"{storage.uri}/{CONFIG_FILE}: existing run config is unreadable; "
            "use a new output.name (or --output)"
        )
    current = spec.model_dump(mode="json")
    for key in _RESUME_KEYS:
        if _model_shape(key, previous.get(key)) != _model_shape(key, current[key]):
            raise SpecError(
                f"{key}: differs from the existing run in {storage.uri}; "
                "use a new output.name (or --output) to start a fresh run"
            )


def _stage_marker(stage: Stage) -> str:
    return f"{STAGES_DIR}/{stage.name}/done.json"


def _stage_location(stage: Stage, single: bool) -> tuple[str | None, str]:
    """(subdir, Ray run name): a one-stage job keeps Ray's run at `<run>/train`."""
    return (None, TRAIN_DIR) if single else (STAGES_DIR, stage.name)


def _finished_checkpoint(storage, stage: Stage):
    """The final checkpoint of a stage that already finished with this very spec, or None."""
    import ray.train

    if not storage.exists(_stage_marker(stage)):
        return None
    done = json.loads(storage.read_text(_stage_marker(stage)))
    if done.get("spec") != stage.spec.model_dump(mode="json"):
        return None  # the stage changed (e.g. more steps): Ray resumes it from its checkpoint
    return ray.train.Checkpoint(done["checkpoint"], filesystem=storage.ray_storage()[1])


def _run_stages(stages: list[Stage], storage, extra_inputs: dict, callbacks: list | None) -> dict:
    """Run each stage in order (skipping finished ones); {stage name: final checkpoint}.
    extra_inputs and callbacks go to every stage's trainer (a sweep trial's cache and
    `TuneReportCallback`)."""
    from distill.cluster.launch import fit  # imports Ray: only after every check has passed

    root = stages[0].spec.teacher.name
    st_teacher = resolve_teacher(root) if is_sentence_transformer(root) else None
    outputs: dict = {}
    previous_student = None  # the last distill stage, whose student the next one carries on
    for stage in stages:
        carry = previous_student is not None and _same_student(previous_student, stage)
        checkpoint = _finished_checkpoint(storage, stage)
        if checkpoint is None:
            subdir, name = _stage_location(stage, len(stages) == 1)
            if len(stages) > 1:
                print(f"[distill] stage {stage.name} ({stage.kind})", flush=True)
                storage.write_text(f"{subdir}/{name}/{CONFIG_FILE}", dump_spec(stage.spec))
            targets = None
            if stage.spec.objective.sequence_kd is not None:
                from distill.cluster.teacher_generations import cache_teacher_targets

                teacher_ckpt = outputs.get(stage.teacher_stage)
                with _teacher_folder(teacher_ckpt, stage.spec) as teacher_dir:
                    teacher_id = teacher_ckpt.path if teacher_ckpt else teacher_dir
                    targets = cache_teacher_targets(stage.spec, storage, teacher_dir, teacher_id)
            result = fit(
                stage.spec,
                storage,
                name=name,
                subdir=subdir,
                stage_inputs={
                    "kind": stage.kind,
                    "teacher_checkpoint": outputs.get(stage.teacher_stage),
                    "previous_checkpoint": outputs[previous_student.name] if carry else None,
                    "st_teacher": st_teacher,
                    "teacher_targets": targets,
                    **extra_inputs,
                },
                callbacks=callbacks,
            )
            if getattr(result, "error", None):
                raise result.error
            checkpoint = result.checkpoint
            storage.write_text(
                _stage_marker(stage),
                json.dumps(
                    {"checkpoint": checkpoint.path, "spec": stage.spec.model_dump(mode="json")}
                ),
            )
        outputs[stage.name] = checkpoint
        if stage.kind == "distill":
            previous_student = stage
    return outputs


def _same_student(previous: Stage, stage: Stage) -> bool:
    """A stage continues the previous distill stage's student when it asks for the same one
    (MiniLM's teacher assistant changes the student and so starts a new one)."""
    return stage.kind == "distill" and previous.spec.student == stage.spec.student


def run_job(
    spec: JobSpec,
    output: str | None = None,
    *,
    teacher_cache: dict | None = None,
    cache_bypass: str | None = None,
    callbacks: list | None = None,
) -> dict:
    """Run one distillation job (all its stages) end to end and return its report.

    teacher_cache: a cache `distill.cluster.teacher_cache.prepare_cache` found or built for this
    single-stage job (a sweep shares one across trials), or `cache_bypass` says why the
    teacher runs on the fly (both land in the report); callbacks: extra Ray Train
    callbacks, e.g. Tune's `TuneReportCallback` when the job is a sweep trial."""
    started = time.perf_counter()
    spec = in_job_working_dir(spec)  # a submitted job: its bundled files on this node
    stages = preflight_stages(spec)
    run_dir = run_dir_for(spec, output)
    storage = check_storage(run_dir, spec, "--output" if output else "output.dir")
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"name": storage.name})})
    if len(stages) == 1:
        spec = stages[0].spec.model_copy(update={"output": spec.output})
        stages = [Stage(stages[0].name, stages[0].kind, spec)]
    _check_resumable(storage, spec)
    try:
        storage.write_text(CONFIG_FILE, dump_spec(spec))
    except OSError as exc:
        raise SpecError(
            f"--output {run_dir}: cannot create the run folder ({exc.strerror})"
        ) from None

    if teacher_cache is not None and len(stages) > 1:
        raise SpecError("stages: the teacher-output cache serves single-stage jobs only")
    extra = {"teacher_cache": teacher_cache} if teacher_cache else {}
    outputs = _run_stages(stages, storage, extra, callbacks)
    final = stages[-1]
    final_spec = final.spec.model_copy(update={"output": spec.output})
    checkpoint = outputs[final.name]
    with checkpoint.as_directory() as folder:  # from S3: a local download, removed after
        folder = Path(folder)
        storage.put_dir(folder / STUDENT_DIR, STUDENT_DIR)
        probe = torch.load(folder / PROBE_FILE)
        state = json.loads((folder / STATE_FILE).read_text())
        storage.write_text("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state["history"]))
        _, eval_rows = train_eval_texts(final_spec)
        with _teacher_folder(outputs.get(final.teacher_stage), final_spec) as teacher_dir:
            build = build_generative_report if _generative(teacher_dir) else build_report
            report = build(
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
                    {"name": s.name, "kind": s.kind, "steps": s.spec.training.steps} for s in stages
                ],
            )
    report["teacher_cache"] = cache_summary(teacher_cache, cache_bypass)
    storage.write_text("report.json", json.dumps(report, indent=2))
    return report


def _generative(folder: str) -> bool:
    from transformers import AutoConfig

    from distill.core.generative import is_generative

    return is_generative(AutoConfig.from_pretrained(folder))


@contextlib.contextmanager
def _teacher_folder(checkpoint, spec: JobSpec):
    if checkpoint is None:
        yield resolve_teacher(spec.teacher.name)
        return
    with checkpoint.as_directory() as folder:
        yield str(Path(folder) / STUDENT_DIR)
