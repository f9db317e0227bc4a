"""One stage's set-up on one Ray Train rank (`set_up_stage`): the frozen teacher placed as
preflight decided (`cluster/teacher_on_worker.py`), the stage's trainable student, this
rank's data shards, and the student's DeepSpeed engine, bundled as a `LiveStage` that the
worker loop (`cluster/worker_loop.py`) trains. Every phase is marked in the rank's memory
record (`cluster/worker_memory.py`).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass

import deepspeed
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer

from distill.cluster.cache_store import open_cache
from distill.cluster.deepspeed_config import deepspeed_config
from distill.cluster.job_data import train_eval_texts
from distill.cluster.live_metrics import LiveMetrics
from distill.cluster.pipeline import WorkerInputs, stage_student
from distill.cluster.storage import Storage, open_storage
from distill.cluster.teacher_generations import cache_teacher_targets, with_teacher_targets
from distill.cluster.teacher_on_worker import PlacedTeacher, place_teacher
from distill.cluster.worker_env import in_job_working_dir
from distill.cluster.worker_memory import MemoryRecorder
from distill.core.cache_format import INDEX_COLUMN, folder_digest
from distill.core.data import load_sts_pairs, tokenizers_differ
from distill.core.family_interface import ModelFamily
from distill.core.family_registry import family_of
from distill.core.generative import with_prompts
from distill.core.lazy_teacher import skeleton_teacher
from distill.core.outputs import TaskHead, has_task_head
from distill.core.spec import JobSpec, SequenceKdSpec
from distill.core.stages import Stage
from distill.core.student import no_gather
from distill.core.student_resolution import PRETRAINED
from distill.core.teacher import freeze, resolve_teacher
from distill.core.teacher_plan import TORCH_DTYPES


@dataclass
@dataclass
class Models:
    teacher_dir: str
    placed: PlacedTeacher
    teacher_head: TaskHead | None
    tokenizer: object  # the student's
    teacher_tokenizer: object | None  # the teacher's, when it differs from the student's
    family: ModelFamily
    model: torch.nn.Module

    @property
    def teacher(self) -> torch.nn.Module:
        return self.placed.module


@dataclass
class StageData:
    """What the stage trains and evaluates on, on this rank."""

    train_ds: object
    collate: object
    eval_loader: DataLoader
    steps_per_epoch: int  # batches (micro-batches under gradient accumulation)
    cache: object | None  # the teacher-output cache this stage reads, if any
    sts_pairs: object | None  # the STS pairs the evaluation scores, if any
    mix_generator: torch.Generator  # MixKD's partners and ratios
    mask_generator: torch.Generator  # masked-LM positions


@dataclass
class RankContext:
    """This rank in its run: where it writes, which attempt it is, what it records."""

    rank: int
    world: int
    storage: Storage
    attempt: str
    multi_stage: bool
    st_teacher: str | None  # the root teacher's sentence-transformers folder (export layout)
    # Which placement group holds this run's workers: a sweep releases it if Tune stops the
    # trial mid-run (see cluster/tune_sweep.py).
    placement_group: str | None
    memory: MemoryRecorder  # this process's memory phases
    live: LiveMetrics | None = None  # rank 0: metrics.jsonl and TensorBoard, as it trains


@dataclass
class LiveStage:
    """One stage on this rank: what it is (plan, spec), its models and student engine, its
    data, and this rank's context; `teacher_before` is the teacher's fingerprint at load,
    checked again at the end."""

    plan: Stage
    spec: JobSpec
    models: Models
    engine: object
    data: StageData
    run: RankContext
    teacher_before: str = ""

    @property
    def teacher(self):
        """What the family runs as the teacher: the module on this rank, or the service
        that answers for it (`distill.core.outputs.RemoteTeacher`)."""
        placed = self.models.placed
        return placed.service if placed.service is not None else placed.module


def set_up_stage(
    inputs: WorkerInputs, plan: Stage, scratch: contextlib.ExitStack, memory: MemoryRecorder
) -> LiveStage:
    """Teacher, trainable model, data shards and DeepSpeed engine of one stage; `memory`
    marks the phases of the set-up."""
    # A submitted job's relative paths name files in this node's copy of its working dir.
    spec = in_job_working_dir(plan.spec)
    t = spec.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.scaling.cpus_per_worker)
    torch.manual_seed(t.seed)
    storage = open_storage(inputs.run_uri, inputs.s3)
    if rank == 0 and inputs.multi_stage:
        print(f"[distill] stage {plan.name} ({plan.kind})", flush=True)
    cache = open_cache(
        inputs.teacher_cache, spec, scratch.enter_context(tempfile.TemporaryDirectory())
    )
    models = _load_models(
        spec,
        plan,
        storage,
        scratch,
        memory,
        cached=cache is not None,
        service=inputs.teacher_service,
    )
    train_ds, eval_ds, collate = _shard_data(spec, plan, models, storage, cache, rank, world)
    if cache is not None:
        config = models.teacher.config
        needed, _ = models.family.cache_plan(spec, config, train_ds.column_names)
        if needed is None or not cache.plan.covers(needed):
            raise ValueError(f"teacher cache holds {cache.plan}; this objective reads {needed}")
    engine = _engine(spec, models)
    memory.mark("engines_ready")
    group = ray.util.get_current_placement_group()
    data = StageData(
        train_ds=train_ds,
        collate=collate,
        eval_loader=DataLoader(eval_ds, batch_size=t.batch_size, collate_fn=collate),
        steps_per_epoch=len(train_ds) // t.batch_size,
        cache=cache,
        sts_pairs=load_sts_pairs(spec.evaluation.sts_path, spec.evaluation.max_sts_pairs)
        if spec.evaluation.sts_path
        else None,
        mix_generator=torch.Generator().manual_seed(t.seed * 7919 + rank),
        mask_generator=torch.Generator().manual_seed(t.seed * 104729 + rank),
    )
    context = RankContext(
        rank=rank,
        world=world,
        storage=storage,
        attempt=inputs.attempt,
        multi_stage=inputs.multi_stage,
        st_teacher=inputs.st_teacher,
        placement_group=group.id.hex() if group is not None else None,
        memory=memory,
    )
    return LiveStage(
        plan, spec, models, engine, data, context, teacher_before=models.placed.fingerprint()
    )


def _gatherer(placed: PlacedTeacher):
    """Gathers a ZeRO-3 teacher's parameters while the student copies them (none else)."""
    if not placed.partitioned:
        return no_gather
    return lambda params: deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _load_models(
    spec: JobSpec,
    plan: Stage,
    storage: Storage,
    scratch,
    memory: MemoryRecorder,
    *,
    cached: bool = False,
    service=None,
) -> Models:
    """The frozen teacher (the spec's, or an earlier stage's export), its family and the
    stage's trainable model (fresh, a teacher copy, or an earlier stage's student).

    cached: a teacher-output cache serves every teacher output, so the teacher is never
    loaded: its module is a weightless skeleton whose weights are read from its files only
    while the student copies them (`distill.core.lazy_teacher`). A `width_slice` student
    ranks the teacher's channels by their weights, so it still loads the teacher whole.
    service: the Ray Serve deployment answering for the teacher (`teacher.placement:
    service`); the module is a skeleton as with a cache (a whole teacher only when its
    folder has no safetensors weights to read lazily, for the student's initialisation)."""
    teacher_dir = _stage_export(storage, plan.teacher_stage, scratch) or resolve_teacher(
        spec.teacher.name
    )
    family = family_of(AutoConfig.from_pretrained(teacher_dir))
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    previous = _stage_export(storage, plan.continues, scratch)
    # The student's tokenizer: a continued stage's export's, a pretrained student's own, else
    # the teacher's. When it differs, batches carry both tokenizations.
    own = previous or (spec.student.name if spec.student.init == PRETRAINED else None)
    tokenizer = AutoTokenizer.from_pretrained(own) if own else teacher_tokenizer
    if not tokenizers_differ(tokenizer, teacher_tokenizer):
        teacher_tokenizer = None
    lazy = None
    if (cached or service is not None) and spec.student.init != "width_slice":
        lazy = skeleton_teacher(teacher_dir, family.auto_class)
    if service is not None:
        from distill.cluster.teacher_service import ServedTeacher

        served = ServedTeacher(service, has_head=has_task_head(teacher_dir))
        if lazy is not None:
            module, gather, keep = lazy
        else:
            module, gather, keep = family.load_model(teacher_dir), no_gather, _kept
        placed = PlacedTeacher(module, "service", service=served)
        teacher_head = family.served_teacher_head(module, keep)  # an LM's output head
    elif lazy is not None:
        placed, teacher_head = PlacedTeacher(lazy.module, "cache"), None
        gather = lazy.gather
    else:
        placed = place_teacher(spec, family, teacher_dir, ray.train.torch.get_device())
        gather = _gatherer(placed)
        teacher_head = TaskHead.load(teacher_dir)
        if teacher_head is not None:
            freeze(teacher_head)
    memory.mark("teacher_loaded")
    model = family.trainable(
        spec,
        placed.module,
        tokenizer,
        kind=plan.kind,
        previous_student=previous,
        gather=gather,
    )
    memory.mark("student_built")
    return Models(teacher_dir, placed, teacher_head, tokenizer, teacher_tokenizer, family, model)


def _kept(params) -> None:
    """`keep` of a teacher loaded whole: its parameters are real already."""


def _shard_data(spec: JobSpec, plan: Stage, models: Models, storage, cache, rank, world):
    """(train shard, eval shard, collate) of this rank, tokenized by the family."""
    tokenizer, max_length = models.tokenizer, spec.data.max_length
    train_texts, eval_texts = train_eval_texts(spec)
    if spec.objective.sequence_kd is not None:  # train on the teacher's generations
        train_texts = _with_generations(spec, storage, plan, models.teacher_dir, train_texts, rank)
    if spec.objective.on_policy_fraction > 0:  # the prompts the student continues
        train_texts = with_prompts(
            train_texts,
            tokenizer,
            prefix_fraction=(spec.objective.sequence_kd or SequenceKdSpec()).prefix_fraction,
            max_length=max_length,
        )
    tokenize, collate = models.family.batch_functions(tokenizer, models.teacher_tokenizer)
    train_ds = tokenize(train_texts, tokenizer, max_length)
    if cache is not None:  # rows keep their index into the cache (built on the whole set)
        train_ds = _indexed(train_ds, cache, "train")
    train_ds = train_ds.shard(world, rank, contiguous=True)
    if len(train_ds) < spec.training.batch_size:
        raise ValueError(
            f"data.train: shard of {len(train_ds)} rows is smaller than training.batch_size "
            f"{spec.training.batch_size}"
        )
    # Equal eval shards: under ZeRO-3 every forward is a collective, so ranks must run the
    # same number of eval batches or the longer one waits forever.
    eval_texts = eval_texts.select(range(len(eval_texts) - len(eval_texts) % world))
    eval_ds = tokenize(eval_texts, tokenizer, max_length)
    if cache is not None:
        eval_ds = _indexed(eval_ds, cache, "eval")
    return train_ds, eval_ds.shard(world, rank, contiguous=True), collate


def _indexed(rows, cache, split: str):
    """`rows` with each row's index into the cache's `split` (built on the whole set)."""
    # Workers train on every cached train row and evaluate on a prefix of the eval rows.
    if len(rows) > cache.rows(split) or (split == "train" and len(rows) != cache.rows(split)):
        raise ValueError(f"teacher cache: {cache.rows(split)} {split} rows, data {len(rows)}")
    return rows.add_column(INDEX_COLUMN, list(range(len(rows))))


def _engine(spec: JobSpec, models: Models):
    """The student's DeepSpeed engine; the frozen teacher goes to the same device and
    precision, outside the engine and its optimizer."""
    engine, _, _, _ = deepspeed.initialize(
        model=models.model,
        model_parameters=[p for p in models.model.parameters() if p.requires_grad],
        config=deepspeed_config(spec, spec.training.steps),
    )
    if models.teacher_head is not None:  # the teacher itself was placed at teacher.dtype
        models.teacher_head.to(device=engine.device, dtype=TORCH_DTYPES[spec.teacher.dtype])
    _assert_teacher_outside(engine, models.teacher)
    return engine


def _stage_export(storage: Storage, name: str | None, scratch: contextlib.ExitStack) -> str | None:
    """A local copy of an earlier stage's export (None when `name` is None)."""
    if name is None:
        return None
    folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix=f"distill-{name}-"))
    return str(storage.get_dir(stage_student(name), folder))


def _with_generations(spec, storage: Storage, plan: Stage, teacher_dir: str, train, rank):
    """Sequence-level KD: rank 0 generates (or finds) the teacher's targets in the run's
    storage; every rank then trains on them."""
    teacher_id = folder_digest(teacher_dir) if plan.teacher_stage else teacher_dir
    ref = None
    if rank == 0:
        ref = cache_teacher_targets(spec, storage, teacher_dir, teacher_id)
    shared = [ref]
    dist.broadcast_object_list(shared, src=0)
    return with_teacher_targets(train, shared[0], spec)


def _assert_teacher_outside(engine, teacher: torch.nn.Module) -> None:
    """The teacher must be in neither the engine nor its optimizer."""
    teacher_ids = {id(p) for p in teacher.parameters()}
    in_engine = any(id(p) in teacher_ids for p in engine.module.parameters())
    in_optimizer = any(
        id(p) in teacher_ids for group in engine.optimizer.param_groups for p in group["params"]
    )
    if in_engine or in_optimizer:
        raise RuntimeError("a teacher parameter reached the DeepSpeed engine or its optimizer")
