"""Checks that run before Ray starts: every bad input becomes a one-line `SpecError`
naming the field or file. Returns the spec with derived values filled in (student width
from the teacher, steps from epochs)."""

from __future__ import annotations

import contextlib
import math
import os

from distill.cluster.deepspeed_config import deepspeed_config, load_user_config
from distill.cluster.job_data import train_eval_texts
from distill.core.architectures import BUILTIN_PREFIX, builtin_architectures, builtin_path
from distill.core.checkpoint_slices import shape_problem
from distill.core.data import DataError, load_sts_pairs, sts_file, tokenizers_differ
from distill.core.family_registry import family_of
from distill.core.hub import HubUnreachable
from distill.core.model_files import has_weights as teacher_has_weights
from distill.core.model_files import teacher_folder_problem
from distill.core.named_files import (
    absolute_paths,
    folder_problem,
    looks_like_local_path,
    sts_file_problem,
)
from distill.core.outputs import has_task_head
from distill.core.spec import MAX_COUNT, JobSpec, SpecError
from distill.core.stages import Stage, expand_stages
from distill.core.student_resolution import PRETRAINED
from distill.core.teacher import load_teacher_config, resolve_teacher
from distill.core.teacher_plan import (
    footprint,
    meta_model,
    resolve_placement,
    worker_memory_bytes,
    worker_memory_on_nodes,
)


def _teacher_config(spec: JobSpec, kind: str):
    """The teacher's config, once its folder (when local) holds all that the workers load:
    config, weights (none only for a `pretrain` stage's architecture) and tokenizer."""
    name = spec.teacher.name
    if name.startswith(BUILTIN_PREFIX) and builtin_path(name) is None:
        known = [f"{BUILTIN_PREFIX}{a}" for a in builtin_architectures()]
        raise SpecError(f"teacher.name: {name} is no packaged architecture; choose from {known}")
    path = resolve_teacher(name)
    missing = folder_problem(name, path)
    if missing:
        raise SpecError(f"teacher.name: folder {name} {missing}")
    if os.path.isdir(path):
        # A builtin architecture has no weights on purpose: its family says what to do.
        needs_weights = kind != "pretrain" and builtin_path(name) is None
        problem = teacher_folder_problem(path, needs_weights=needs_weights)
        if problem:
            raise SpecError(f"teacher.name: {name}: {problem}")
    try:
        return load_teacher_config(name)
    except HubUnreachable as exc:
        raise SpecError(f"teacher.name: {exc}") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"teacher.name: cannot load {name!r} as a local folder or hub model ({reason})"
        ) from None


def _student_tokenizer(spec: JobSpec, kind: str, teacher_source: str) -> str:
    """Where the stage's student tokenizer comes from: a pretrained student's folder (checked
    like a teacher's: config, weights, tokenizer), else `teacher_source`."""
    s = spec.student
    if kind != "distill" or s.init != PRETRAINED or s.name is None:
        return teacher_source
    name = s.name
    if looks_like_local_path(name) or os.path.isabs(name) or os.path.exists(name):
        if not os.path.isdir(name):
            what = (
                "is a file, expected a model folder" if os.path.exists(name) else "does not exist"
            )
            raise SpecError(f"student.name: folder {name} {what}")
        problem = teacher_folder_problem(name, needs_weights=True)
        if problem:
            raise SpecError(f"student.name: {name}: {problem}")
    return name


def _tokenizers_differ(student_source: str, teacher_source: str) -> bool:
    if student_source == teacher_source:
        return False
    from transformers import AutoTokenizer

    loaded = []
    for field, source in (("student.name", student_source), ("teacher.name", teacher_source)):
        try:
            loaded.append(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise SpecError(
                f"{field}: cannot load the tokenizer of {source!r} ({reason})"
            ) from None
    return tokenizers_differ(*loaded)


def _check_lengths(spec: JobSpec, config, who: str = "teacher") -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and spec.data.max_length > limit:
        raise SpecError(
            f"data.max_length: {spec.data.max_length} exceeds the {who}'s {limit} positions"
        )


def _check_scaling(spec: JobSpec, local_resources: bool = True) -> None:
    sc, ds = spec.scaling, spec.deepspeed
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise SpecError("deepspeed.offload_optimizer: needs deepspeed.zero_stage >= 1")
    if ds.offload_parameters and ds.zero_stage != 3:
        raise SpecError("deepspeed.offload_parameters: needs deepspeed.zero_stage 3")
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
    inference = spec.teacher.inference  # the Ray Data actors that build a teacher cache
    need = inference.actors * inference.cpus_per_actor
    if need > cpus:
        raise SpecError(
            f"teacher.inference.actors: {inference.actors} actors x {inference.cpus_per_actor} "
            f"CPUs needs {need} CPUs, this machine has {cpus}"
        )
    _check_service_resources(spec, cpus)
    for field, gpus in (
        ("scaling.gpus_per_worker", sc.gpus_per_worker),
        ("teacher.inference.gpus_per_actor", inference.gpus_per_actor),
        ("teacher.service.gpus_per_replica", spec.teacher.service.gpus_per_replica),
    ):
        if gpus > 0 and not _gpu_visible():
            raise SpecError(f"{field}: > 0 but no GPU is visible on this machine")


def _check_placement(spec: JobSpec, stage: Stage, mode: str, family, stages: int) -> None:
    """What each teacher placement cannot do, in one line naming the field."""
    if mode in ("zero3", "service") and stage.kind != "distill":
        raise SpecError(
            f"teacher.placement: {mode} applies to distill stages; a {stage.kind} stage "
            "trains a full copy of its teacher (use replicate)"
        )
    if mode in ("zero3", "service") and spec.student.init == "width_slice":
        raise SpecError(
            "student.init: width_slice ranks the whole teacher's channels; with "
            f"teacher.placement {mode} use a layer-choice init (uniform_map, first_k, ...)"
        )
    if mode != "service":
        return
    if family.name not in ("encoder", "causal", "seq2seq"):
        raise SpecError(
            f"teacher.placement: service serves encoder and language-model teachers; this "
            f"{family.name} teacher runs in the workers (replicate or zero3)"
        )
    if spec.objective.sequence_kd is not None:
        raise SpecError(
            "objective.sequence_kd: the teacher generates the training targets in the "
            "workers; with teacher.placement service it is not there (use replicate or zero3)"
        )
    if stages > 1 or stage.teacher_stage is not None:
        raise SpecError(
            "teacher.placement: service serves the teacher of a single-stage job; a "
            "pipeline's teachers run in the workers"
        )
    if spec.teacher.cache.mode != "off":
        raise SpecError(
            f"teacher.cache.mode: {spec.teacher.cache.mode} with teacher.placement service; "
            "the service answers every step (set teacher.cache.mode: off)"
        )
    service = spec.teacher.service
    if service.max_batch_size < spec.training.batch_size:
        raise SpecError(
            f"teacher.service.max_batch_size: {service.max_batch_size} rows is less than one "
            f"worker's batch (training.batch_size {spec.training.batch_size})"
        )


def _check_service_resources(spec: JobSpec, cpus: int) -> None:
    """A local run's service replicas and workers must fit this machine together."""
    if spec.teacher.placement != "service" or spec.teacher.service.name is not None:
        return  # attached: the deployment already runs
    service, sc = spec.teacher.service, spec.scaling
    if service.cpus_per_replica > cpus:
        raise SpecError(
            f"teacher.service.cpus_per_replica: {service.cpus_per_replica:g} CPUs, this "
            f"machine has {cpus}"
        )
    need = sc.num_workers * sc.cpus_per_worker + service.replicas * service.cpus_per_replica
    if need > cpus:
        raise SpecError(
            f"teacher.service.cpus_per_replica: {service.replicas} replica(s) x "
            f"{service.cpus_per_replica:g} CPUs beside {sc.num_workers} workers x "
            f"{sc.cpus_per_worker} CPUs needs {need:g} CPUs, this machine has {cpus} "
            "(fractions of a CPU are allowed)"
        )


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


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
    per_step = t.batch_size * sc.num_workers * t.gradient_accumulation_steps
    if len(train) < per_step:
        accumulation = (
            f" x {t.gradient_accumulation_steps} accumulated"
            if t.gradient_accumulation_steps > 1
            else ""
        )
        raise SpecError(
            f"data.train: {len(train)} rows is fewer than one step "
            f"(training.batch_size {t.batch_size} x {sc.num_workers} workers{accumulation})"
        )
    if t.epochs is not None:
        exact = t.epochs * len(train) / per_step
        if exact > MAX_COUNT:
            raise SpecError(
                f"training.epochs: {t.epochs:g} epochs of {len(train)} rows are {exact:.3g} steps; "
                f"at most {MAX_COUNT}"
            )
        steps = max(1, math.floor(exact))
        spec = spec.model_copy(
            update={"training": t.model_copy(update={"steps": steps, "epochs": None})}
        )
    sts = spec.evaluation.sts_path
    if sts:
        try:
            sts = sts_file(sts)
        except ValueError as exc:
            raise SpecError(f"evaluation.sts_path: {exc}") from None
        problem = sts_file_problem(sts)
        if problem:
            raise SpecError(f"evaluation.sts_path: {problem}")
        try:
            load_sts_pairs(sts)  # every row: a bad score must not wait for the final report
        except UnicodeDecodeError:
            raise SpecError(f"evaluation.sts_path: {sts}: not UTF-8 text") from None
        except ValueError as exc:
            raise SpecError(f"evaluation.sts_path: {exc}") from None
    return spec


def resolve_deepspeed(spec: JobSpec) -> JobSpec:
    """`deepspeed.config` read from its file into the spec (the workers and the run's
    config.yaml get the mapping itself) and checked against the fields distill owns."""
    ds = spec.deepspeed
    if ds.config is None:
        return spec
    user = load_user_config(ds.config) if isinstance(ds.config, str) else ds.config
    spec = spec.model_copy(update={"deepspeed": ds.model_copy(update={"config": user})})
    deepspeed_config(spec, spec.training.steps or 1)  # conflicts: one SpecError
    return spec


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


def take_lease(
    held: contextlib.ExitStack,
    storage,
    *,
    force: bool,
    field: str = "--output",
    ttl_s: float = 120.0,
) -> None:
    """Hold the run (or sweep) folder's lease until `held` closes (renewed meanwhile,
    released at the end, lasting `ttl_s` after each renewal; every write under the folder
    fenced by it, see cluster/lease.py).
    Another writer's valid lease is a one-line SpecError naming it (host, pid, since),
    before Ray starts; `force` takes it over."""
    from distill.cluster.lease import hold_lease
    from distill.cluster.storage import LeaseHeld

    try:
        held.enter_context(hold_lease(storage, force=force, ttl_s=ttl_s))
    except LeaseHeld as exc:
        raise SpecError(f"{field}: {exc}") from None
    except OSError as exc:  # the folder cannot be created (a file in the way, no permission)
        raise SpecError(
            f"{field} {storage.uri}: cannot create the folder ({exc.strerror})"
        ) from None


def preflight(spec: JobSpec) -> JobSpec:
    """Validate a one-stage spec without Ray; return the resolved spec."""
    return preflight_stages(spec)[-1].spec


def _worker_memory(spec: JobSpec, local_resources: bool, nodes: dict) -> int | None:
    """A worker's memory for the placement estimate: the spec's, this machine's for a local
    run, else from Ray's resources of the running cluster at `RAY_ADDRESS` (read once per
    preflight into `nodes`)."""
    remote = bool(os.environ.get("RAY_ADDRESS"))
    known = worker_memory_bytes(spec, local=local_resources and not remote)
    if known is not None or not remote:
        return known
    if "alive" not in nodes:
        from distill.cluster.launch import ClusterUnreachable, cluster_node_resources

        try:
            nodes["alive"] = cluster_node_resources()
        except ClusterUnreachable as exc:
            raise SpecError(f"RAY_ADDRESS: {exc}") from None
    if nodes["alive"] is None:
        return None
    sc = spec.scaling
    return worker_memory_on_nodes(nodes["alive"], sc.cpus_per_worker, sc.gpus_per_worker)


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
    tokenizer_of: dict[str, str] = {}  # stage name -> folder of the tokenizer its export has
    nodes: dict = {}  # a running cluster's node resources, read at most once
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
                teacher_tokenizer = tokenizer_of[ref]
            else:
                tc = _teacher_config(s, stage.kind)
                teacher_tokenizer = resolve_teacher(s.teacher.name)
                has_head = has_task_head(teacher_tokenizer)
                has_weights = teacher_has_weights(teacher_tokenizer)
            student_tokenizer = _student_tokenizer(s, stage.kind, teacher_tokenizer)
            family = family_of(tc)
            s = family.resolve_stage(
                s,
                stage.kind,
                tc,
                teacher_has_weights=has_weights,
                teacher_has_head=has_head,
                cross_tokenizer=_tokenizers_differ(student_tokenizer, teacher_tokenizer),
            )
            _check_lengths(s, tc)
            if s.student.init == PRETRAINED and stage.kind == "distill":
                _check_lengths(s, family.output_config(s, stage.kind, tc), "student")
            shapes = meta_model(tc, family.auto_class)
            if ref is None and has_weights:  # shapes against the config, headers only
                problem = shape_problem(teacher_tokenizer, shapes)
                if problem:
                    raise SpecError(f"teacher.name: {problem}")
            student_config = family.output_config(s, stage.kind, tc)
            placement = resolve_placement(
                s,
                footprint(tc, family.auto_class, shapes),
                _worker_memory(s, local_resources, nodes),
                config=tc,
                student_parameters=footprint(student_config, family.auto_class).parameters
                if student_config is not None
                else 0,
            )
            _check_placement(s, stage, placement.partition, family, len(stages))
            teacher = s.teacher.model_copy(
                update={"placement": placement.partition, "dtype": placement.dtype}
            )
            s = s.model_copy(update={"teacher": teacher})
            s = resolve_deepspeed(s)
            if check_data:
                s = _check_data(s)
        except SpecError as exc:
            raise SpecError(f"{prefix}{exc}") from None
        done = Stage(stage.name, stage.kind, s, placement)
        tokenizer_of[stage.name] = student_tokenizer
        made[stage.name] = (family.output_config(s, stage.kind, tc), s.task is not None)
        resolved.append(done)
    return resolved
