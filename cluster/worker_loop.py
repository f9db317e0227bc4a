"""The Ray Train worker loop: a job's stages, one after another, on one rank of one worker
group, each stage a DeepSpeed-ZeRO distillation.

Everything arrives through `config["inputs"]` (a frozen `cluster.pipeline.WorkerInputs`).
The teacher is frozen and kept out of the DeepSpeed engine. The family of the teacher
(`distill.core.family_registry`) supplies the model, batches, teacher outputs and export. Checkpoints: every
rank saves its shard into the same temporary folder name, then every rank calls
`ray.train.report` with it, which Ray merges into one checkpoint. A stage's final
checkpoint also carries `student/` (the HF export, written by rank 0 with ZeRO-3 weights
gathered) and `probe.pt` (outputs of fixed probe texts from the trained in-memory model,
used to check the export); a stage that later stages read also leaves its export in the
run's storage (`cluster.pipeline`).

The steps, each a short function: `resume_point`, `set_up_stage` (`cluster/stage_setup.py`:
teacher, student, data, engine), `restore`, `train_step` (`next_batch`, `student_samples`,
`teacher_targets`, `loss_step`, the non-finite guard, DeepSpeed's backward and step),
`evaluate`, `save_and_report`, `finish_stage`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import deepspeed
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from distill.cluster.checkpoints import write_sent
from distill.cluster.deepspeed_config import skip_inference_comm_op
from distill.cluster.lease import enter_fence
from distill.cluster.live_metrics import TENSORBOARD_DIR, LiveMetrics
from distill.cluster.pipeline import (
    METRICS_FILE,
    WorkerInputs,
    mark_done,
    stage_dir,
    stage_student,
)
from distill.cluster.run_files import (
    DIVERGED_FILE,
    ENGINE_TAG,
    PROBE_FILE,
    RNG_FILE,
    STATE_FILE,
    STUDENT_DIR,
)
from distill.cluster.stage_setup import LiveStage, set_up_stage
from distill.cluster.storage import open_storage
from distill.cluster.storage_protocol import check_fenced
from distill.cluster.tracking import Trackers, local_root
from distill.cluster.worker_memory import MemoryRecorder, read_memory
from distill.core.cache_format import INDEX_COLUMN
from distill.core.spec import JobSpec
from distill.core.spike_guard import SpikeGuard
from distill.core.stages import Stage
from distill.core.teacher_plan import TORCH_DTYPES

_UNTIMED_STEPS = 2  # first steps of a stage warm up allocators and communication
# Per-step time breakdown in metrics; `generate`: the student's samples (objective.on_policy).
_PHASES = ("generate", "teacher", "forward", "backward", "step")


# -- the loop --------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Run the job's stages from where it stands (Ray Train's entry point on every rank)."""
    _quiet_report_logging()
    skip_inference_comm_op()  # before any DeepSpeed engine: ZeRO never calls the op
    inputs: WorkerInputs = config["inputs"]
    enter_fence(inputs.fence, inputs.s3)  # every write into the run folder checks the lease
    limit = inputs.stages[0].spec.scaling.memory_per_worker_gb
    memory = MemoryRecorder(limit_bytes=None if limit is None else int(limit * 2**30)).start()
    memory.mark("started")
    first, checkpoint = resume_point(inputs, ray.train.get_checkpoint())
    previous_end = None
    try:
        for plan in inputs.stages[first:]:
            resume = checkpoint if plan is inputs.stages[first] else None
            previous_end = run_stage(inputs, plan, resume, previous_end, memory)
            if previous_end is None:  # diverged: the job stops with its last good state
                return
    finally:
        memory.stop()


def run_stage(
    inputs: WorkerInputs,
    plan: Stage,
    checkpoint,
    previous_end: float | None = None,
    memory: MemoryRecorder | None = None,
) -> float | None:
    """One stage: set up, restore, train to its last step, export. `previous_end`: when
    the previous stage of this worker group finished (its first metrics then record the
    stage switch); `memory`: this process's phase record (`cluster.worker_memory`).
    Returns when this stage finished, or None when it diverged."""
    with contextlib.ExitStack() as scratch:
        stage = set_up_stage(inputs, plan, scratch, memory or MemoryRecorder())
        progress = restore(stage, checkpoint)
        stage.run.live = _live_metrics(stage, progress.history, scratch)
        progress.previous_end = previous_end
        total = stage.spec.training.steps
        for step in range(progress.step + 1, total + 1):
            for micro in range(stage.spec.training.gradient_accumulation_steps):
                loss, parts = train_step(stage, progress, step, micro)  # steps on the last
            stage.run.memory.check()  # over scaling.memory_per_worker_gb: stop, keep checkpoints
            if step == total:
                stage.run.memory.mark("steady")
            patience = stage.spec.training.stop_after_nonfinite
            if progress.nonfinite_streak >= patience or (
                step == total and not _finite_state(stage, progress)
            ):  # never export a non-finite state
                stop_diverged(stage, progress, step)
                return None
            if _spiked(stage, progress, loss, parts):  # finite, but far above its median
                stop_diverged(stage, progress, step, spike=progress.spike.last)
                return None
            if _due(stage.spec, step) or step == total:
                metrics = step_metrics(stage, progress, step, loss, parts)
                if step == total:
                    finish_stage(stage, progress, metrics, inputs)
                elif (
                    step % stage.spec.training.checkpoint_every == 0
                    and not (progress.spike and progress.spike.streak)  # no spiking state
                    and _finite_state(stage, progress)
                ):
                    save_and_report(stage, step, metrics, progress.history)
                else:  # no checkpoint of a non-finite state: the last finite one stays newest
                    ray.train.report({**metrics, **_placement()})
        if progress.step >= total and progress.resumed_finished:
            # Already finished (a re-run): re-emit the final checkpoint with its export.
            metrics = dict(progress.history[-1]) if progress.history else {"step": total}
            finish_stage(stage, progress, metrics, inputs)
        stage.engine.destroy()
    return time.perf_counter()


# -- state -----------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the stage's training stands on this rank."""

    step: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    batches: object = None
    resumed_finished: bool = False
    train_time: float = 0.0
    samples: int = 0
    tokens: int = 0  # real (non-padding) tokens of the timed steps
    timed_steps: int = 0
    loss_sum: float = 0.0
    spike: SpikeGuard | None = None  # training.stop_on_spike, made at the first step
    loss_n: int = 0
    started: float = field(default_factory=time.perf_counter)
    previous_end: float | None = None  # the previous stage's end (stage switch timing)
    switch_s: float | None = None  # previous stage's final report -> this stage's 1st step
    nonfinite_streak: int = 0  # consecutive steps with a non-finite loss or gradient norm
    nonfinite_parts: tuple[str, ...] = ()  # what went non-finite on the latest such step

    @property
    def finite(self) -> bool:
        return self.nonfinite_streak == 0

    phase_time: dict = field(default_factory=lambda: dict.fromkeys(_PHASES, 0.0))


# -- steps -----------------------------------------------------------------------------------


def resume_point(inputs: WorkerInputs, checkpoint) -> tuple[int, object | None]:
    """(index of the stage to start at, the checkpoint to resume it from or None).

    A checkpoint this invocation wrote (the worker group restarted after a failure) resumes
    at its own stage; an earlier invocation's checkpoint resumes only the stage this
    invocation starts at (a pipeline whose earlier stage changed starts that stage anew).
    A checkpoint the driver found damaged is never read: the newest intact one the driver
    chose (`inputs.resume_from`) replaces it, or none (step 0) when none is left."""
    if checkpoint is not None and os.path.basename(checkpoint.path.rstrip("/")) in inputs.damaged:
        checkpoint = None
        if inputs.resume_from is not None:
            root, filesystem = open_storage(inputs.run_uri, inputs.s3).ray_storage()
            checkpoint = ray.train.Checkpoint(f"{root}/{inputs.resume_from}", filesystem=filesystem)
    if checkpoint is None:
        return inputs.start, None
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, STATE_FILE)) as f:
            state = json.load(f)
    names = [s.name for s in inputs.stages]
    name = state.get("stage", names[0] if len(names) == 1 else None)
    if name not in names:
        return inputs.start, None
    index = names.index(name)
    if state.get("attempt") == inputs.attempt or index == inputs.start:
        return index, checkpoint
    return inputs.start, None


def restore(stage: LiveStage, checkpoint) -> Progress:
    """The stage's progress: from `checkpoint` (engine, step, history, data position) or
    from step 0."""
    progress = Progress()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _, client_state = stage.engine.load_checkpoint(folder, tag=ENGINE_TAG)
            with open(os.path.join(folder, STATE_FILE)) as f:
                progress.history = json.load(f)["history"]
        progress.step = int(client_state["step"])
        progress.resumed_finished = progress.step >= stage.spec.training.steps
        if stage.run.rank == 0:
            print(f"[distill] resumed from checkpoint at step {progress.step}", flush=True)
    read = progress.step * stage.spec.training.gradient_accumulation_steps  # micro-batches
    progress.epoch = read // stage.data.steps_per_epoch
    progress.batches = _batches(stage, progress.epoch)
    for _ in range(read % stage.data.steps_per_epoch):  # replay the data position
        next(progress.batches)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            set_random_state(stage, os.path.join(folder, RNG_FILE.format(rank=stage.run.rank)))
    stage.engine.train()
    return progress


def random_state(stage: LiveStage) -> dict[str, torch.Tensor]:
    """This rank's random states as the next step will draw from them: torch's (dropout),
    the device's, and the stage's own generators (MixKD partners and ratios, MLM masks)."""
    state = {
        "torch": torch.get_rng_state(),
        "mix": stage.data.mix_generator.get_state(),
        "mask": stage.data.mask_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_state(stage: LiveStage, path: str) -> None:
    """Restore what `random_state` saved at `path`, so a resumed run draws the same dropout,
    masks and mixes as the run that was never stopped; a checkpoint without it (an older
    one, or a rank the saving run did not have) leaves the seeded states as they are."""
    if not os.path.isfile(path):
        return
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    stage.data.mix_generator.set_state(state["mix"])
    stage.data.mask_generator.set_state(state["mask"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train_step(stage: LiveStage, progress: Progress, step: int, micro: int = 0):
    """One forward and backward on the next batch (micro-batch `micro` of optimizer step
    `step`), and DeepSpeed's step (an optimizer update at the end of
    `training.gradient_accumulation_steps` micro-batches); returns (loss, loss parts)."""
    engine = stage.engine
    batch, index = next_batch(stage, progress)
    marks = [time.perf_counter()]
    batch = student_samples(stage, batch, step, micro)
    marks.append(time.perf_counter())
    targets = teacher_targets(stage, batch, index, "train")
    stage.run.memory.mark_once("first_teacher_forward")
    mixed = stage.models.family.mixed_batch(
        stage.models.model,
        batch,
        stage.teacher,
        stage.models.teacher_head,
        stage.spec,
        stage.data.mix_generator,
    )
    marks.append(time.perf_counter())
    loss, parts, bad = loss_step(engine, batch, targets, mixed)
    marks.append(time.perf_counter())
    if _any_rank(bool(bad)):  # every rank skips this update together (ZeRO collectives)
        progress.nonfinite_streak += 1
        progress.nonfinite_parts = tuple(bad) or ("another rank's loss",)
        engine.zero_grad()
        return loss, parts
    engine.backward(loss)  # includes ZeRO gradient reduction
    marks.append(time.perf_counter())
    engine.step()  # optimizer on this rank's partition + parameter all-gather
    marks.append(time.perf_counter())
    norm = engine.get_global_grad_norm()
    if norm is not None and not math.isfinite(float(norm)):
        progress.nonfinite_streak += 1
        progress.nonfinite_parts = ("gradient norm",)
    else:
        progress.nonfinite_streak, progress.nonfinite_parts = 0, ()
    _record_step(progress, step, marks, batch, loss)
    return loss, parts


def loss_step(model, batch: dict, targets, mixed=None) -> tuple[torch.Tensor, dict, list[str]]:
    """The stage's objective on one prepared batch: (loss, its named parts, the names of
    those that are not finite). `model` is the family's trainable module (or the DeepSpeed
    engine around it); `targets` are the teacher's outputs from `teacher_targets`. Needs no
    Ray and no process group: a unit test drives it with a plain module."""
    loss, parts = model(batch, targets, mixed)
    return loss, parts, _nonfinite({"loss": loss, **parts})


def student_samples(stage: LiveStage, batch: dict, step: int, micro: int) -> dict:
    """`objective.on_policy`: on a step drawn on-policy (from the seed and the step, so
    every rank takes the same branch and a ZeRO-3 teacher's forward stays a collective they
    all call), the batch of the student's own continuations of its prompts; else the batch
    itself. The teacher-output cache is never on with it (preflight)."""
    m = stage.models
    return m.family.on_policy_batch(
        m.model,
        batch,
        stage.spec,
        step=step,
        stream=(stage.run.rank, micro),
        tokenizer=m.tokenizer,
        teacher_tokenizer=m.teacher_tokenizer,
    )


def teacher_targets(stage: LiveStage, batch: dict, index, split: str):
    """The teacher's outputs for a prepared batch: read from the teacher-output cache
    (rows `index` of `split`), else a forward of the live teacher, replicated,
    ZeRO-3-partitioned (then a collective: every rank calls it together) or served by a Ray
    Serve deployment."""
    if stage.data.cache is not None:
        dtype = TORCH_DTYPES[stage.spec.deepspeed.precision]
        return stage.models.family.cached_outputs(stage.data.cache, split, index, batch, dtype)
    return stage.models.family.teacher_outputs(
        stage.models.model, stage.teacher, stage.models.teacher_head, batch
    )


def next_batch(stage: LiveStage, progress: Progress) -> tuple[dict, torch.Tensor | None]:
    """The next training batch on the engine's device, prepared by the family (masking,
    infilling), and its rows' cache index; a new epoch starts when one runs out."""
    try:
        batch = next(progress.batches)
    except StopIteration:
        progress.epoch += 1
        progress.batches = _batches(stage, progress.epoch)
        batch = next(progress.batches)
    index = batch.pop(INDEX_COLUMN, None)
    prepared = stage.models.family.prepare_batch(
        stage.models.model, _on(stage.engine, batch), stage.data.mask_generator
    )
    return prepared, index


def _record_step(progress: Progress, step: int, marks: list[float], batch: dict, loss) -> None:
    """Add a finished step's loss and (after the untimed warm-up steps) its phase times."""
    if step > progress.step + _UNTIMED_STEPS or progress.timed_steps:
        progress.train_time += marks[-1] - marks[0]
        progress.samples += batch["input_ids"].shape[0]
        mask = batch.get("attention_mask")
        progress.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        progress.timed_steps += 1
        for phase, begin, end in zip(_PHASES, marks, marks[1:]):
            progress.phase_time[phase] += end - begin
    progress.loss_sum += loss.detach().item()
    progress.loss_n += 1
    if progress.previous_end is not None and progress.switch_s is None:
        progress.switch_s = marks[-1] - progress.previous_end


def step_metrics(stage: LiveStage, progress: Progress, step: int, loss, parts) -> dict:
    """The logged metrics of `step` (means over ranks), with evaluation when it is due;
    prints rank 0's progress line and appends to the history."""
    t, world = stage.spec.training, stage.run.world
    samples_per_s = progress.samples / progress.train_time if progress.train_time else 0.0
    metrics = {
        "step": step,
        **({"stage": stage.plan.name} if stage.run.multi_stage else {}),
        "placement_group": stage.run.placement_group,
        "epoch": progress.epoch,
        # Non-finite steps update nothing and are left out of the mean (nan if all were).
        "loss": _mean_across_ranks(
            progress.loss_sum / progress.loss_n if progress.loss_n else math.nan
        ),
        "samples_per_s": _mean_across_ranks(samples_per_s) * world,
        "tokens_per_s": _mean_across_ranks(
            progress.tokens / progress.train_time if progress.train_time else 0.0
        )
        * world,
        "lr": stage.engine.get_lr()[0],
        **{f"loss_{k}": v.detach().item() for k, v in parts.items()},
        **{
            f"ms_{phase}": _mean_across_ranks(1000 * spent / max(progress.timed_steps, 1))
            for phase, spent in progress.phase_time.items()
        },
    }
    # Memory of the most loaded rank: resident anonymous memory now, and peak RSS so far.
    now = read_memory()
    metrics["rss_anon_mb"] = _max_across_ranks(now["anon"] / 2**20)
    metrics["rss_peak_mb"] = _max_across_ranks(now["hwm"] / 2**20)
    if torch.cuda.is_available():
        metrics["gpu_peak_mb"] = _max_across_ranks(torch.cuda.max_memory_allocated() / 2**20)
    if progress.switch_s is not None and not progress.history:
        metrics["stage_switch_s"] = _mean_across_ranks(progress.switch_s)
    if step % t.eval_every == 0 or step == t.steps:
        metrics.update(evaluate(stage))
    if stage.run.rank == 0:
        done = step - (progress.history[0]["step"] - t.log_every if progress.history else 0)
        elapsed = time.perf_counter() - progress.started
        eta = elapsed / max(done, 1) * (t.steps - step)
        extra = f" | eval {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
        print(
            f"[distill] step {step}/{t.steps} | loss {metrics['loss']:.4f}{extra} | "
            f"{metrics['samples_per_s']:.1f} samples/s | eta {math.ceil(eta)}s",
            flush=True,
        )
    progress.loss_sum, progress.loss_n = 0.0, 0
    progress.history.append(metrics)
    if stage.run.live is not None:
        stage.run.live.log(metrics)
    return metrics


@torch.no_grad()
def evaluate(stage: LiveStage) -> dict[str, float]:
    """Mean eval loss (accuracy for classification heads, STS Spearman with
    `evaluation.sts_path`) over every rank's shard; the same masks at every evaluation."""
    engine, family, model = stage.engine, stage.models.family, stage.models.model
    seed = stage.spec.training.seed + stage.run.rank
    engine.eval()
    total, n, correct, seen = 0.0, 0, 0, 0
    for batch in stage.data.eval_loader:
        index = batch.pop(INDEX_COLUMN, None)
        batch = family.prepare_batch(model, _on(engine, batch), torch.Generator().manual_seed(seed))
        loss, _, _ = loss_step(engine, batch, teacher_targets(stage, batch, index, "eval"))
        total, n = total + float(loss), n + 1
        counts = family.eval_counts(model, batch)
        if counts is not None:
            correct, seen = correct + counts[0], seen + counts[1]
    out = {"eval_loss": _mean_across_ranks(total / max(n, 1))}
    if seen:
        out["eval_accuracy"] = out["eval_quality"] = _mean_across_ranks(correct / seen)
    if stage.data.sts_pairs is not None:
        # Every rank encodes every pair, so under ZeRO-3 all ranks run the same collectives.
        out["eval_quality"] = family.in_training_quality(
            model, stage.models.tokenizer, stage.data.sts_pairs, stage.spec.data.max_length
        )
    engine.train()
    return out


def save_and_report(
    stage: LiveStage, step: int, metrics: dict, history: list[dict], *, final: bool = False
) -> None:
    """Every rank: save its engine shard (and, on the final step, rank 0 the export), then
    report together; Ray merges the ranks' files into one checkpoint."""
    with tempfile.TemporaryDirectory(prefix="distill-ckpt-") as tmp:
        stage.engine.save_checkpoint(tmp, tag=ENGINE_TAG, client_state={"step": step})
        torch.save(random_state(stage), os.path.join(tmp, RNG_FILE.format(rank=stage.run.rank)))
        state = {"stage": stage.plan.name, "attempt": stage.run.attempt, "step": step}
        if final:
            _export(stage, tmp)
            state.update(_teacher_state(stage))
        if stage.run.rank == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump({**state, "history": history}, f)
            if final and stage.run.multi_stage:  # later stages read this stage's export
                stage.run.storage.put_dir(
                    os.path.join(tmp, STUDENT_DIR), stage_student(stage.plan.name)
                )
        write_sent(tmp, stage.run.rank)  # what this rank uploads, hashed before the upload
        dist.barrier()
        check_fenced(stage.run.storage.uri)  # a writer that lost its lease uploads nothing
        ray.train.report(
            {**metrics, **_placement()}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
        )


def stop_diverged(stage: LiveStage, progress: Progress, step: int, spike=None) -> None:
    """Stop a diverging stage (non-finite values, or a loss `spike` that stayed up): record
    why in the run's storage (`DIVERGED_FILE`, read by the driver), report without a
    checkpoint (so the newest checkpoint stays the last healthy state) and export nothing.
    Every rank reports, as Ray Train requires."""
    record = {
        "attempt": stage.run.attempt,
        "step": step,
        **({"stage": stage.plan.name} if stage.run.multi_stage else {}),
    }
    if spike is not None:
        setting = stage.spec.training.stop_on_spike
        record["spike"] = {**spike, "factor": setting.factor, "steps": setting.steps}
        why = f"loss {spike['loss']:.4g} above {setting.factor:g}x its median {spike['median']:.4g}"
    else:
        record["nonfinite"] = list(progress.nonfinite_parts or ("trained parameters",))
        record["nonfinite_steps"] = progress.nonfinite_streak
        why = f"{', '.join(record['nonfinite'])} not finite"
    if stage.run.rank == 0:
        print(f"[distill] stopping at step {step}: {why}")
        stage.run.storage.write_text(DIVERGED_FILE, json.dumps(record))
    dist.barrier()
    ray.train.report({**record, "diverged": True, **_placement()})


def finish_stage(stage: LiveStage, progress: Progress, metrics: dict, inputs: WorkerInputs) -> None:
    """The stage's final checkpoint with its export; a stage that is not the job's last
    is then marked done in the run's storage, for later stages and re-runs."""
    save_and_report(stage, stage.spec.training.steps, metrics, progress.history, final=True)
    if not stage.run.multi_stage:
        return
    if stage.run.rank == 0:  # each stage's own metrics; the job's metrics.jsonl is the last's
        lines = "".join(json.dumps(h) + "\n" for h in progress.history)
        stage.run.storage.write_text(f"{stage_dir(stage.plan.name)}/{METRICS_FILE}", lines)
        if stage.plan is not inputs.stages[-1]:
            mark_done(stage.run.storage, stage.plan, student=stage_student(stage.plan.name))
    dist.barrier()


# -- helpers ---------------------------------------------------------------------------------


def _due(spec: JobSpec, step: int) -> bool:
    t = spec.training
    return not (step % t.log_every and step % t.eval_every and step % t.checkpoint_every)


def _spiked(stage: LiveStage, progress: Progress, loss, parts: dict) -> bool:
    """Feed the spike guard this step's loss averaged over the ranks (so every rank decides
    alike) and this rank's loss parts; True once it says stop."""
    setting = stage.spec.training.stop_on_spike
    if setting is None:
        return False
    if progress.spike is None:
        progress.spike = SpikeGuard(setting.factor, setting.steps, setting.window)
    mean = _mean_across_ranks(float(loss))
    if not math.isfinite(mean):
        return False  # the non-finite guard's case
    return progress.spike.update(mean, {k: float(v) for k, v in parts.items()})


def _finite_state(stage: LiveStage, progress: Progress) -> bool:
    """This step's loss was finite and every rank's trained parameters are (an update from
    a huge but finite loss can already have made them inf or nan)."""
    params = stage.models.model.parameters()
    if stage.spec.deepspeed.zero_stage == 3:  # each rank holds its partition in ds_tensor
        params = (p.ds_tensor for p in params)
    local = progress.finite and all(torch.isfinite(p.detach()).all() for p in params)
    return not _any_rank(not local)


def _nonfinite(values: dict) -> list[str]:
    """Names of the scalar tensors that are inf or nan (`loss` and its parts)."""
    return [name for name, v in values.items() if not torch.isfinite(v.detach()).all()]


def _any_rank(flag: bool) -> bool:
    """True when `flag` holds on any rank (a max all-reduce of one number)."""
    return bool(_all_reduce(1.0 if flag else 0.0, dist.ReduceOp.MAX))


def _all_reduce(value: float, op=dist.ReduceOp.SUM) -> float:
    """One number reduced over the ranks; NCCL reduces only CUDA tensors, gloo CPU ones."""
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def _on(engine, batch: dict) -> dict:
    return {k: v.to(engine.device) for k, v in batch.items()}


def _batches(stage: LiveStage, epoch: int):
    """One epoch of shuffled batches; the order depends only on (seed, epoch)."""
    seed = stage.spec.training.seed
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return iter(
        DataLoader(
            stage.data.train_ds,
            batch_size=stage.spec.training.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=stage.data.collate,
            drop_last=True,
        )
    )


def _live_metrics(stage: LiveStage, history: list[dict], scratch) -> LiveMetrics | None:
    """Rank 0's live metrics of the stage: the run's metrics.jsonl and tensorboard/ (a
    pipeline's stage: its own stages/<name>/metrics.jsonl and tensorboard/<name>/)."""
    if stage.run.rank != 0:
        return None
    metrics_file, events = METRICS_FILE, TENSORBOARD_DIR
    if stage.run.multi_stage:
        metrics_file = f"{stage_dir(stage.plan.name)}/{METRICS_FILE}"
        events = f"{TENSORBOARD_DIR}/{stage.plan.name}"
    trackers = None
    if stage.spec.tracking.mlflow is not None or stage.spec.tracking.wandb is not None:
        name = stage.spec.output.name
        run_name = f"{name}/{stage.plan.name}" if stage.run.multi_stage else name
        trackers = Trackers(stage.spec, run_name, local_root(stage.run.storage))
    live = LiveMetrics(stage.run.storage, metrics_file, events, history, trackers)
    scratch.push(lambda exc_type, exc, tb: live.close(ok=exc_type is None))
    return live


def _export(stage: LiveStage, folder: str) -> None:
    """Rank 0 writes the HF export and the probe outputs into a checkpoint folder; under
    ZeRO-3 every rank first joins the gather of the partitioned parameters."""
    params = list(stage.models.model.parameters())
    gather = (
        deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        if stage.spec.deepspeed.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if stage.run.rank == 0:
            probe = stage.models.family.export(
                stage.models.model,
                stage.models.tokenizer,
                os.path.join(folder, STUDENT_DIR),
                max_length=stage.spec.data.max_length,
                st_teacher=stage.run.st_teacher,
            )
            torch.save(probe, os.path.join(folder, PROBE_FILE))


def _mean_across_ranks(value: float) -> float:
    return _all_reduce(value) / dist.get_world_size()


def _max_across_ranks(value: float) -> float:
    return _all_reduce(value, dist.ReduceOp.MAX)


def _placement() -> dict:
    """Where this rank runs, added to every report (not to the history): the controller's
    `ReportLog` records it per rank, e.g. to show the workers ran on different nodes."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def _teacher_state(stage: LiveStage) -> dict:
    """The teacher's fingerprint before and after the stage, and where it lived: its
    partition, dtype and the parameters resident on each rank (a collective)."""
    before, after = stage.teacher_before, stage.models.placed.fingerprint()
    local, memory = [None] * stage.run.world, [None] * stage.run.world
    dist.all_gather_object(local, stage.models.placed.local_parameters())
    dist.all_gather_object(memory, stage.run.memory.summary())
    return {
        "teacher_fingerprint": {"before": before, "after": after, "unchanged": before == after},
        "teacher_placement": {
            "partition": stage.models.placed.partition,
            "dtype": stage.spec.teacher.dtype,
            "parameters": stage.models.placed.total_parameters(),
            "parameters_per_rank": local,
            "loader": stage.models.placed.loader,
            **_service_calls(stage),
            "memory": memory,  # per rank: phases and whole-life peaks (cluster.worker_memory)
        },
    }


def _service_calls(stage: LiveStage) -> dict:
    """Per rank, a service teacher's calls, retries (a replica lost) and seconds waited."""
    service = stage.models.placed.service
    if service is None:
        return {}
    calls = [None] * stage.run.world
    dist.all_gather_object(calls, service.record())
    return {"service_calls": calls}


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
