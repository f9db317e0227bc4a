"""Checks that run before Ray starts: every bad input becomes a one-line `SpecError`
naming the field or file. Returns the spec with derived values filled in (student width
from the teacher, steps from epochs)."""

from __future__ import annotations

import math
import os

from distill.cluster.job_data import train_eval_texts
from distill.core.data import DataError
from distill.core.evaluation import load_sts_pairs
from distill.core.generative import (
    GenerativeSize,
    generative_student_config,
    is_generative,
)
from distill.core.generative import has_weights as has_weights_at
from distill.core.objective import (
    ATTENTION_LOSSES,
    LOSSES,
    TASK_LOSSES,
    TEACHERLESS_LOSSES,
    layer_pairs,
)
from distill.core.outputs import TASK_HEAD_DIR
from distill.core.spec import JobSpec, SpecError
from distill.core.stages import Stage, expand_stages
from distill.core.student import StudentSize, init_teacher_layers, student_config
from distill.core.teacher import load_teacher_config, looks_like_local_path, resolve_teacher
from distill.jobs.generative_preflight import resolve_generative_stage


def _teacher_config(spec: JobSpec):
    name = spec.teacher.name
    path = resolve_teacher(name)
    if (looks_like_local_path(name) or os.path.isabs(path)) and not os.path.isdir(path):
        raise SpecError(f"teacher.name: folder {name} does not exist")
    try:
        return load_teacher_config(name)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"teacher.name: cannot load {name!r} as a local folder or hub model ({reason})"
        ) from None


def _check_width_slice(hidden: int, heads: int, ffn: int, tc) -> None:
    """width_slice keeps whole teacher heads and can only narrow the teacher."""
    for field, value, most in (
        ("hidden", hidden, tc.hidden_size),
        ("heads", heads, tc.num_attention_heads),
        ("ffn", ffn, tc.intermediate_size),
    ):
        if value > most:
            raise SpecError(
                f"student.{field}: width_slice can only narrow the teacher; {value} > {most}"
            )
    head_dim = tc.hidden_size // tc.num_attention_heads
    if hidden != heads * head_dim:
        raise SpecError(
            f"student.heads: width_slice keeps whole teacher heads of {head_dim}, so hidden "
            f"{hidden} needs heads={hidden // head_dim}, got {heads}"
        )


def _resolve_student(spec: JobSpec, tc) -> JobSpec:
    s = spec.student
    if s.kind == "lstm":
        if s.init not in ("random", "every_other_layer") or s.teacher_layers:
            raise SpecError(
                "student.init: an LSTM student takes no teacher layers; drop student.init"
            )
        return spec.model_copy(
            update={
                "student": s.model_copy(
                    update={"freeze_word_embeddings": bool(s.freeze_word_embeddings)}
                )
            }
        )
    hidden = s.hidden or tc.hidden_size
    head_dim = tc.hidden_size // tc.num_attention_heads
    heads = s.heads or (
        tc.num_attention_heads if hidden == tc.hidden_size else max(1, hidden // head_dim)
    )
    if hidden % heads:
        raise SpecError(f"student.heads: {heads} does not divide student.hidden {hidden}")
    ffn = s.ffn or round(hidden * tc.intermediate_size / tc.hidden_size)
    if s.init == "width_slice":
        _check_width_slice(hidden, heads, ffn, tc)
    try:
        init_teacher_layers(s.init, tc.num_hidden_layers, s.layers, s.teacher_layers)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    freeze = s.freeze_word_embeddings
    if freeze is None:
        freeze = s.init != "random" and hidden == tc.hidden_size
    elif freeze and s.init == "random":
        raise SpecError(
            "student.freeze_word_embeddings: true needs a teacher-initialised student, not init=random"
        )
    return spec.model_copy(
        update={
            "student": s.model_copy(
                update={
                    "hidden": hidden,
                    "heads": heads,
                    "ffn": ffn,
                    "freeze_word_embeddings": freeze,
                }
            )
        }
    )


def _check_lengths(spec: JobSpec, tc) -> None:
    limit = getattr(tc, "max_position_embeddings", None)
    if limit is not None and spec.data.max_length > limit:
        raise SpecError(
            f"data.max_length: {spec.data.max_length} exceeds the teacher's {limit} positions"
        )


def _check_objective(spec: JobSpec, tc, teacher_has_head: bool) -> None:
    o, s = spec.objective, spec.student
    unknown = sorted(set(o.weights) - set(LOSSES))
    if unknown:
        raise SpecError(f"objective.weights: unknown loss {unknown}; choose from {sorted(LOSSES)}")
    used = {name for name, w in o.weights.items() if w > 0}
    if not used:
        raise SpecError("objective.weights: needs at least one loss with a positive weight")
    student_depth = s.lstm.layers if s.kind == "lstm" else s.layers
    try:
        layer_pairs(o.layer_map, student_depth, tc.num_hidden_layers)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if used & TASK_LOSSES and spec.task is None:
        raise SpecError(f"objective.weights: {sorted(used & TASK_LOSSES)} need a task (task.type)")
    if {"logit_kl", "logit_mse"} & used and not teacher_has_head:
        raise SpecError(
            "objective.weights: logit_kl/logit_mse need a teacher with a task head: a "
            "finetune stage (teacher.name: stage:NAME) or a folder with task_head/"
        )
    if "logit_kl" in used and spec.task and spec.task.type == "regression":
        raise SpecError(
            "objective.weights: logit_kl needs classification; use logit_mse for regression"
        )
    if "mlm" in used and s.kind == "lstm":
        raise SpecError("objective.weights: mlm needs a transformer student")
    attention = used & ATTENTION_LOSSES
    if attention and s.kind == "lstm":
        raise SpecError(f"objective.weights: {sorted(attention)} need a transformer student")
    if o.attention_layer is not None and o.attention_layer > tc.num_hidden_layers:
        raise SpecError(
            f"objective.attention_layer: {o.attention_layer} not in 1..{tc.num_hidden_layers}"
        )
    if {"attention_kl", "value_relation_kl"} & used and s.heads != tc.num_attention_heads:
        raise SpecError(
            f"student.heads: attention_kl/value_relation_kl need the teacher's "
            f"{tc.num_attention_heads} heads, got {s.heads}; use minilmv2_relations"
        )
    if "minilmv2_relations" in used:
        heads = o.relation_heads or tc.num_attention_heads
        for who, width in (("student.hidden", s.hidden), ("teacher hidden", tc.hidden_size)):
            if width % heads:
                raise SpecError(f"objective.relation_heads: {heads} does not divide {who} {width}")


def _check_scaling(spec: JobSpec, local_resources: bool = True) -> None:
    sc, ds = spec.scaling, spec.deepspeed
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise SpecError("deepspeed.offload_optimizer: needs deepspeed.zero_stage >= 1")
    if sc.gpus_per_worker == 0 and ds.precision == "fp16":
        raise SpecError("deepspeed.precision: fp16 needs a GPU; use fp32 or bf16 on the CPU")
    if os.environ.get("RAY_ADDRESS") or not local_resources:
        return  # a remote cluster's resources are checked by Ray itself
    cpus = os.cpu_count() or 1
    need = sc.num_workers * sc.cpus_per_worker
    if need > cpus:
        raise SpecError(
            f"scaling.num_workers: {sc.num_workers} workers x {sc.cpus_per_worker} CPUs needs {need} CPUs, "
            f"this machine has {cpus}"
        )
    if sc.gpus_per_worker > 0:
        import torch

        if not torch.cuda.is_available():
            raise SpecError("scaling.gpus_per_worker: > 0 but no GPU is visible on this machine")


def _check_data(spec: JobSpec) -> JobSpec:
    try:
        train, held_out = train_eval_texts(spec)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise SpecError(f"data: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # hub unreachable, unparsable file, ...
        raise SpecError(
            f"data.train: cannot load {[s.path for s in spec.data.train_sources]} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if len(held_out) < spec.scaling.num_workers:
        raise SpecError(
            f"data.eval: the held-out split has {len(held_out)} rows; "
            f"need at least one per worker ({spec.scaling.num_workers})"
        )
    t, sc = spec.training, spec.scaling
    per_step = t.batch_size * sc.num_workers
    if len(train) < per_step:
        raise SpecError(
            f"data.train: {len(train)} rows is fewer than one step "
            f"(training.batch_size {t.batch_size} x {sc.num_workers} workers)"
        )
    if t.epochs is not None:
        steps = max(1, math.floor(t.epochs * len(train) / per_step))
        spec = spec.model_copy(
            update={"training": t.model_copy(update={"steps": steps, "epochs": None})}
        )
    sts = spec.evaluation.sts_path
    if sts:
        if not os.path.isfile(sts):
            raise SpecError(f"evaluation.sts_path: file {sts} not found")
        try:
            load_sts_pairs(sts, limit=1)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SpecError(
                f"evaluation.sts_path: {sts} is not an STS Benchmark file ({exc})"
            ) from None
    return spec


def _absolute(path: str, field: str = "") -> str:
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else path


def absolute_paths(spec: JobSpec) -> JobSpec:
    """Local paths made absolute: Ray workers do not share the driver's working directory.
    Names with nothing on disk (hub models and datasets) are left as they are."""
    return spec.map_paths(_absolute)


def check_storage(uri, spec: JobSpec, field: str = "output.dir"):
    """Open the run's storage and probe it (S3: head-bucket plus a small write, short
    timeouts), so a malformed URI, a missing bucket, rejected credentials, a missing
    permission or an unreachable endpoint fail in seconds, before Ray. Returns the storage."""
    from distill.cluster.storage import StorageError, open_storage

    try:
        storage = open_storage(uri, spec.output.s3)
        storage.probe()
    except StorageError as exc:
        raise SpecError(f"{field}: {exc}") from None
    return storage


def preflight(spec: JobSpec) -> JobSpec:
    """Validate a one-stage spec without Ray; return the resolved spec."""
    return preflight_stages(spec)[-1].spec


def _as_finetune(spec: JobSpec, tc) -> JobSpec:
    """A finetune stage trains a full copy of its teacher: the student is the teacher."""
    heads = spec.objective.weights
    if any(w > 0 and name not in TEACHERLESS_LOSSES for name, w in heads.items()):
        raise SpecError(
            f"objective.weights: a finetune stage trains on labels only ({sorted(TEACHERLESS_LOSSES)})"
        )
    student = spec.student.model_copy(
        update={
            "kind": "transformer",
            "layers": tc.num_hidden_layers,
            "hidden": tc.hidden_size,
            "heads": tc.num_attention_heads,
            "ffn": tc.intermediate_size,
            "init": "first_k",
            "teacher_layers": None,
            "freeze_word_embeddings": False,
        }
    )
    return spec.model_copy(update={"student": student})


def _output_config(stage: Stage, tc):
    """The config of the model a stage produces (for a later stage that uses it as teacher)."""
    s = stage.spec.student
    if stage.kind in ("finetune", "pretrain"):
        return tc
    if is_generative(tc):
        return generative_student_config(
            tc, GenerativeSize(s.layers, s.hidden, s.heads, s.ffn, s.decoder_layers)
        )
    if s.kind == "lstm":
        return None
    return student_config(tc, StudentSize(s.layers, s.hidden, s.heads, s.ffn))


def preflight_stages(
    spec: JobSpec, *, check_data: bool = True, local_resources: bool = True
) -> list[Stage]:
    """Validate every stage without Ray; return them resolved (absolute paths, student
    dims from the teacher, steps from epochs). Errors name `stages.I.field` in pipelines.
    check_data=False skips reading the data (a sweep reads it once for all trials).
    local_resources=False skips the CPU/GPU count of this machine (a job for a cluster)."""
    stages = expand_stages(spec)
    resolved: list[Stage] = []
    made: dict[str, tuple] = {}  # stage name -> (output config, has task head)
    for i, stage in enumerate(stages):
        prefix = f"stages.{i} ({stage.name}): " if len(stages) > 1 else ""
        try:
            s = absolute_paths(stage.spec)
            if i == 0:
                _check_scaling(s, local_resources)
            ref = stage.teacher_stage
            has_weights = True
            if ref is not None:
                tc, has_head = made[ref]
                if tc is None:
                    raise SpecError(f"teacher.name: stage {ref} makes an LSTM, which cannot teach")
            else:
                tc = _teacher_config(s)
                has_head = os.path.isfile(
                    os.path.join(resolve_teacher(s.teacher.name), TASK_HEAD_DIR, "config.json")
                )
                has_weights = has_weights_at(resolve_teacher(s.teacher.name))
            if is_generative(tc):  # GPT-2 / BART-style teachers: token-level objectives
                s = resolve_generative_stage(s, stage.kind, tc, has_weights)
            else:
                if stage.kind == "pretrain":
                    raise SpecError(
                        "kind: pretrain needs a generative (causal or seq2seq) teacher architecture"
                    )
                s = _as_finetune(s, tc) if stage.kind == "finetune" else _resolve_student(s, tc)
                _check_objective(s, tc, has_head)
            _check_lengths(s, tc)
            if check_data:
                s = _check_data(s)
        except SpecError as exc:
            raise SpecError(f"{prefix}{exc}") from None
        done = Stage(stage.name, stage.kind, s)
        made[stage.name] = (_output_config(done, tc), s.task is not None)
        resolved.append(done)
    return resolved
