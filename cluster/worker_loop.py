"""The Ray Train worker loop: one DeepSpeed-ZeRO distillation on one rank.

Everything arrives through `config` (the resolved job spec as JSON). The teacher is frozen
and kept out of the DeepSpeed engine. Checkpoints: every rank saves its shard into the same
temporary folder name, then every rank calls `ray.train.report` with it, which Ray merges
into one checkpoint. The final checkpoint also carries `student/` (the HF export, written by
rank 0 with ZeRO-3 weights gathered) and `probe.pt` (embeddings of fixed probe sentences
from the trained in-memory model, used to check the export).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings

import deepspeed
import ray.train
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from distill.cluster.deepspeed_config import deepspeed_config
from distill.cluster.job_data import train_eval_texts
from distill.cluster.job_model import batch_functions, distillation_model
from distill.cluster.run_files import ENGINE_TAG, PROBE_FILE, PROBE_TEXTS, STATE_FILE, STUDENT_DIR
from distill.cluster.step_inputs import mixed_batch, teacher_outputs, with_mlm_masks
from distill.cluster.teacher_cache import open_cache
from distill.cluster.teacher_generations import with_teacher_targets
from distill.cluster.worker_env import in_job_working_dir
from distill.core.evaluation import load_sts_pairs, spearman_of_embeddings
from distill.core.export import SentenceEncoder, export_student
from distill.core.objective import DistillationModel
from distill.core.outputs import TaskHead, forward_outputs
from distill.core.spec import JobSpec
from distill.core.teacher import freeze, load_teacher, resolve_teacher
from distill.core.teacher_cache import INDEX_COLUMN, plan_for

_UNTIMED_STEPS = 2  # first steps of a process warm up allocators and communication
_TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_PHASES = ("teacher", "forward", "backward", "step")  # per-step time breakdown in metrics


def _batches(dataset, batch_size: int, seed: int, epoch: int, collate_fn):
    """One epoch of shuffled batches; the order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_fn,
            drop_last=True,
        )
    )


def _mean_across_ranks(value: float) -> float:
    # NCCL reduces only CUDA tensors; gloo takes CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


@contextlib.contextmanager
def _model_folder(checkpoint: ray.train.Checkpoint | None, fallback: str | None = None):
    """The exported model inside a previous stage's final checkpoint (downloaded from the
    run's storage, so this works on any node), or `fallback` when there is no checkpoint."""
    if checkpoint is None:
        yield fallback
        return
    with checkpoint.as_directory() as folder:
        yield os.path.join(folder, STUDENT_DIR)


@torch.no_grad()
def _evaluate(engine, teacher, head, loader, model: DistillationModel, mask_fn) -> dict[str, float]:
    """Mean eval loss (and accuracy for classification) over every rank's shard."""
    engine.eval()
    total, n, correct, seen = 0.0, 0, 0, 0
    for batch in loader:
        batch = mask_fn({k: v.to(engine.device) for k, v in batch.items()})
        loss, _ = engine(batch, teacher_outputs(teacher, head, batch, model))
        total, n = total + float(loss), n + 1
        if model.head is not None and model.head.task_type == "classification":
            logits = forward_outputs(model.student, batch, head=model.head).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            seen += len(batch["labels"])
    engine.train()
    out = {"eval_loss": _mean_across_ranks(total / max(n, 1))}
    if model.head is not None and model.head.task_type == "classification":
        out["eval_accuracy"] = _mean_across_ranks(correct / max(seen, 1))
        out["eval_quality"] = out["eval_accuracy"]
    return out


def _placement() -> dict:
    """Where this rank runs, added to every report (not to the history): the controller's
    `ReportLog` records it per rank, e.g. to show the workers ran on different nodes."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


@torch.no_grad()
def _sts_quality(engine, model: DistillationModel, tokenizer, pairs, max_length: int) -> float:
    """STS Spearman of the in-training student's sentence vectors (through the pooled
    projection, as exported): the quality signal Tune's schedulers stop trials on. Every
    rank encodes every pair, so under ZeRO-3 all ranks run the same collectives."""
    projection = (
        model.objective.projections["pooled"] if "pooled" in model.objective.projections else None
    )

    def embed(texts: list[str]) -> torch.Tensor:
        vectors = []
        for i in range(0, len(texts), 64):
            batch = tokenizer(
                texts[i : i + 64],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            pooled = forward_outputs(model.student, batch).pooled
            if projection is not None:
                pooled = projection(pooled.to(projection.weight.dtype))
            vectors.append(pooled.float())
        return torch.cat(vectors)

    engine.eval()
    score = spearman_of_embeddings(embed, pairs)
    engine.train()
    return score


def _save_and_report(
    engine, step: int, metrics: dict, history: list[dict], final_export=None, extra_state=None
) -> None:
    """Every rank: save its engine shard (and rank 0 the export), then report together."""
    with tempfile.TemporaryDirectory(prefix="distill-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=ENGINE_TAG, client_state={"step": step})
        if final_export is not None:
            final_export(tmp)
        if ray.train.get_context().get_world_rank() == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump({"step": step, "history": history, **(extra_state or {})}, f)
        dist.barrier()
        ray.train.report(
            {**metrics, **_placement()}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
        )


def _exporter(engine, model: DistillationModel, tokenizer, spec: JobSpec, st_teacher: str | None):
    """A callback writing the HF export and probe embeddings into a checkpoint folder."""

    def write(folder: str) -> None:
        params = list(model.parameters())
        # ZeRO-3 partitions parameters across ranks: gather them (a collective on every rank).
        gather = (
            deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            if spec.deepspeed.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if ray.train.get_context().get_world_rank() == 0:
                student, projection, head = _plain_fp32_copy(model)
                out = export_student(
                    student,
                    tokenizer,
                    os.path.join(folder, STUDENT_DIR),
                    projection=projection,
                    sentence_transformer_teacher=st_teacher,
                    max_seq_length=spec.data.max_length,
                )
                if head is not None:
                    head.save(out)
                if hasattr(model, "probe_outputs"):  # generative: LM logits
                    probe = model.probe_outputs(
                        student, tokenizer, PROBE_TEXTS, spec.data.max_length
                    )
                else:
                    encoder = SentenceEncoder(student, tokenizer, projection)
                    probe = encoder.encode(PROBE_TEXTS, max_length=spec.data.max_length)
                torch.save(probe, os.path.join(folder, PROBE_FILE))

    return write


def _plain_fp32_copy(model: DistillationModel):
    """A detached fp32 copy of the student (and pooled projection) outside the engine, so
    exporting never changes the dtype or partitioning of the parameters being trained."""
    student = type(model.student)(model.student.config)
    student.load_state_dict(
        {k: v.detach().float().cpu() for k, v in model.student.state_dict().items()}
    )
    student.eval()
    projection = None
    if "pooled" in model.objective.projections:
        src = model.objective.projections["pooled"]
        projection = torch.nn.Linear(src.in_features, src.out_features)
        projection.load_state_dict(
            {k: v.detach().float().cpu() for k, v in src.state_dict().items()}
        )
        projection.eval()
    head = None
    if model.head is not None:
        head = TaskHead(
            model.head.linear.in_features, model.head.linear.out_features, model.head.task_type
        )
        head.load_state_dict(
            {k: v.detach().float().cpu() for k, v in model.head.state_dict().items()}
        )
        head.eval()
    return student, projection, head


def _fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes: proves the teacher was never modified."""
    digest = hashlib.sha256()
    for name, param in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _assert_teacher_outside(engine, teacher: torch.nn.Module) -> None:
    """The teacher must be in neither the engine nor its optimizer."""
    teacher_ids = {id(p) for p in teacher.parameters()}
    in_engine = any(id(p) in teacher_ids for p in engine.module.parameters())
    in_optimizer = any(
        id(p) in teacher_ids for group in engine.optimizer.param_groups for p in group["params"]
    )
    if in_engine or in_optimizer:
        raise RuntimeError("a teacher parameter reached the DeepSpeed engine or its optimizer")


def _teacher_state(before: str, teacher: torch.nn.Module) -> dict:
    after = _fingerprint(teacher)
    return {"teacher_fingerprint": {"before": before, "after": after, "unchanged": before == after}}


def _quiet_report_logging() -> None:
    """Ray Train logs every report at INFO on every rank; our own step line says it once.
    DeepSpeed's ZeRO calls torch collectives that warn of a rename on every call."""
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # internal module moved: keep Ray's default logging
        pass


def train_loop_per_worker(config: dict) -> None:
    _quiet_report_logging()
    # A submitted job's relative paths name files in this node's copy of its working dir.
    spec = in_job_working_dir(JobSpec.model_validate(config["spec"]))
    t = spec.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.scaling.cpus_per_worker)
    torch.manual_seed(t.seed)

    kind = config.get("kind", "distill")
    with _model_folder(
        config.get("teacher_checkpoint"), resolve_teacher(spec.teacher.name)
    ) as teacher_dir:
        teacher, tokenizer = load_teacher(teacher_dir)
        teacher_head = TaskHead.load(teacher_dir)
        if teacher_head is not None:
            freeze(teacher_head)
    with _model_folder(config.get("previous_checkpoint")) as previous:
        model = distillation_model(
            spec, teacher, kind=kind, previous_student=previous, tokenizer=tokenizer
        )
    cache = open_cache(config.get("teacher_cache"), spec)
    if cache is not None:
        needed = plan_for(model.objective.weights, model.objective.pairs)
        if not cache.plan.covers(needed):
            raise ValueError(f"teacher cache holds {cache.plan}; this objective reads {needed}")
    current_group = ray.util.get_current_placement_group()
    placement_group = current_group.id.hex() if current_group is not None else None
    mix_generator = torch.Generator().manual_seed(t.seed * 7919 + rank)
    mlm_generator = torch.Generator().manual_seed(t.seed * 104729 + rank)

    def mlm_masks(batch: dict, generator: torch.Generator | None = None) -> dict:
        if hasattr(model, "prepare_batch"):  # generative: decoder inputs, text infilling
            return model.prepare_batch(batch, generator or mlm_generator)
        if model.mlm_head is None:
            return batch
        return with_mlm_masks(batch, tokenizer, spec, generator or mlm_generator)

    def eval_masks(batch: dict) -> dict:  # the same masks at every evaluation
        return mlm_masks(batch, torch.Generator().manual_seed(t.seed + rank))

    train_texts, eval_texts = train_eval_texts(spec)
    if config.get("teacher_targets"):  # sequence-level KD: the teacher's cached generations
        train_texts = with_teacher_targets(train_texts, config["teacher_targets"], spec)
    tokenize, pad = batch_functions(model, tokenizer)
    if cache is None:
        train_ds = tokenize(
            train_texts.shard(world, rank, contiguous=True), tokenizer, spec.data.max_length
        )
    else:  # rows keep their index into the cache, which was built on the unsharded set
        train_ds = tokenize(train_texts, tokenizer, spec.data.max_length)
        if len(train_ds) != cache.rows:
            raise ValueError(f"teacher cache: {cache.rows} rows, training data {len(train_ds)}")
        train_ds = train_ds.add_column(INDEX_COLUMN, list(range(len(train_ds))))
        train_ds = train_ds.shard(world, rank, contiguous=True)
    sts_pairs = None
    if spec.evaluation.sts_path:
        sts_pairs = load_sts_pairs(spec.evaluation.sts_path, spec.evaluation.max_sts_pairs)
    # Equal eval shards: under ZeRO-3 every forward is a collective, so ranks must run the
    # same number of eval batches or the longer one waits forever.
    eval_texts = eval_texts.select(range(len(eval_texts) - len(eval_texts) % world))
    eval_ds = tokenize(
        eval_texts.shard(world, rank, contiguous=True), tokenizer, spec.data.max_length
    )
    eval_loader = DataLoader(eval_ds, batch_size=t.batch_size, collate_fn=pad)
    steps_per_epoch = len(train_ds) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.train: shard of {len(train_ds)} rows is smaller than training.batch_size {t.batch_size}"
        )
    total_steps = t.steps

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(spec, total_steps),
    )

    # The frozen teacher runs on the workers' device, in the training precision.
    teacher.to(device=engine.device, dtype=_TEACHER_DTYPES[spec.deepspeed.precision])
    if teacher_head is not None:
        teacher_head.to(device=engine.device, dtype=_TEACHER_DTYPES[spec.deepspeed.precision])
    _assert_teacher_outside(engine, teacher)
    teacher_before = _fingerprint(teacher)

    start_step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _, client_state = engine.load_checkpoint(folder, tag=ENGINE_TAG)
            with open(os.path.join(folder, STATE_FILE)) as f:
                history = json.load(f)["history"]
        start_step = int(client_state["step"])
        if rank == 0:
            print(f"[distill] resumed from checkpoint at step {start_step}", flush=True)

    epoch = start_step // steps_per_epoch
    batches = _batches(train_ds, t.batch_size, t.seed, epoch, pad)
    for _ in range(start_step % steps_per_epoch):  # replay the data position of the checkpoint
        next(batches)

    engine.train()
    train_time, samples, loss_sum, loss_n, timed_steps = 0.0, 0, 0.0, 0, 0
    phase_time = dict.fromkeys(_PHASES, 0.0)
    run_start = time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            batches = _batches(train_ds, t.batch_size, t.seed, epoch, pad)
            batch = next(batches)
        index = batch.pop(INDEX_COLUMN, None)
        batch = mlm_masks({k: v.to(engine.device) for k, v in batch.items()})
        marks = [time.perf_counter()]
        if cache is not None:
            teacher_out = cache.lookup(
                index, batch["attention_mask"], _TEACHER_DTYPES[spec.deepspeed.precision]
            )
        else:
            teacher_out = teacher_outputs(teacher, teacher_head, batch, model)
        mixed = mixed_batch(batch, teacher, teacher_head, model, spec, mix_generator)
        marks.append(time.perf_counter())
        loss, parts = engine(batch, teacher_out, mixed)
        marks.append(time.perf_counter())
        engine.backward(loss)  # includes ZeRO gradient reduction
        marks.append(time.perf_counter())
        engine.step()  # optimizer on this rank's partition + parameter all-gather
        marks.append(time.perf_counter())
        if step > start_step + _UNTIMED_STEPS:  # the first steps warm up allocators and comm
            train_time += marks[-1] - marks[0]
            samples += batch["input_ids"].shape[0]
            timed_steps += 1
            for phase, begin, end in zip(_PHASES, marks, marks[1:]):
                phase_time[phase] += end - begin
        loss_sum, loss_n = loss_sum + loss.detach().item(), loss_n + 1

        is_last = step == total_steps
        if (
            step % t.log_every == 0
            or step % t.eval_every == 0
            or step % t.checkpoint_every == 0
            or is_last
        ):
            metrics = {
                "step": step,
                # Which placement group holds this run's workers: a sweep releases it if
                # Tune stops the trial mid-run (see cluster/tune_sweep.py).
                "placement_group": placement_group,
                "epoch": epoch,
                "loss": _mean_across_ranks(loss_sum / loss_n),
                "samples_per_s": _mean_across_ranks(samples / train_time if train_time else 0.0)
                * world,
                "lr": engine.get_lr()[0],
                **{f"loss_{k}": v.detach().item() for k, v in parts.items()},
                **{
                    f"ms_{phase}": _mean_across_ranks(1000 * spent / max(timed_steps, 1))
                    for phase, spent in phase_time.items()
                },
            }
            if step % t.eval_every == 0 or is_last:
                metrics.update(
                    _evaluate(engine, teacher, teacher_head, eval_loader, model, eval_masks)
                )
                if sts_pairs is not None:
                    metrics["eval_quality"] = _sts_quality(
                        engine, model, tokenizer, sts_pairs, spec.data.max_length
                    )
            if rank == 0:
                elapsed = time.perf_counter() - run_start
                eta = elapsed / (step - start_step) * (total_steps - step)
                extra = f" | eval {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
                print(
                    f"[distill] step {step}/{total_steps} | loss {metrics['loss']:.4f}{extra} | "
                    f"{metrics['samples_per_s']:.1f} samples/s | eta {math.ceil(eta)}s",
                    flush=True,
                )
            loss_sum, loss_n = 0.0, 0
            history.append(metrics)
            if is_last:
                exporter = _exporter(engine, model, tokenizer, spec, config.get("st_teacher"))
                _save_and_report(
                    engine,
                    step,
                    metrics,
                    history,
                    final_export=exporter,
                    extra_state=_teacher_state(teacher_before, teacher),
                )
            elif step % t.checkpoint_every == 0:
                _save_and_report(engine, step, metrics, history)
            else:
                ray.train.report({**metrics, **_placement()})

    if start_step >= total_steps:  # already finished: re-emit the final checkpoint with its export
        metrics = dict(history[-1]) if history else {"step": total_steps}
        exporter = _exporter(engine, model, tokenizer, spec, config.get("st_teacher"))
        _save_and_report(
            engine,
            total_steps,
            metrics,
            history,
            final_export=exporter,
            extra_state=_teacher_state(teacher_before, teacher),
        )
