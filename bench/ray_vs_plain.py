"""Throughput of the 2-worker Ray Train + DeepSpeed job against a plain single-process
PyTorch loop doing the same distillation with the same number of threads, in one run.

    python bench/ray_vs_plain.py --steps 40 [--zero-stage 2] [--out bench/results/ray_vs_plain.json]

Both sides: the packaged all-MiniLM-L6-v2 teacher, a 3-layer every-other-layer student,
hidden-MSE + pooled-cosine, the same global batch and sequence length, fp32, AdamW. The
plain loop uses `workers x cpus_per_worker` torch threads; samples/s skip 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distill.cluster.job_data import train_eval_texts
from distill.core.data import collate, tokenize
from distill.core.family_registry import FAMILIES
from distill.core.spec_loading import load_spec
from distill.core.teacher import load_teacher
from distill.jobs.preflight import preflight

PHASES = ("teacher", "forward", "backward", "step")


def plain_loop(spec, steps: int, threads: int) -> dict:
    """Samples/s of one process running the same distillation with `threads` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(spec.training.seed)
    teacher, tokenizer = load_teacher(spec.teacher.name)
    model = FAMILIES["encoder"].trainable(spec, teacher, None)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=spec.training.learning_rate,
        weight_decay=spec.training.weight_decay,
    )
    train, _ = train_eval_texts(spec)
    global_batch = spec.training.batch_size * spec.scaling.num_workers
    loader = DataLoader(
        tokenize(train, tokenizer, spec.data.max_length),
        batch_size=global_batch,
        shuffle=True,
        collate_fn=collate(tokenizer),
        drop_last=True,
    )
    batches = iter(loader)
    samples, elapsed = 0, 0.0
    phases = dict.fromkeys(PHASES, 0.0)
    for step in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        marks = [time.perf_counter()]
        teacher_out = FAMILIES["encoder"].teacher_outputs(model, teacher, None, batch)
        marks.append(time.perf_counter())
        loss, _ = model(batch, teacher_out)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step >= 2:
            elapsed += marks[-1] - marks[0]
            samples += batch["input_ids"].shape[0]
            for phase, begin, end in zip(PHASES, marks, marks[1:]):
                phases[phase] += end - begin
    timed = steps - 2
    return {
        "samples_per_s": samples / elapsed,
        **{f"ms_{k}": 1000 * v / timed for k, v in phases.items()},
    }


def ray_job(spec, run_dir: str) -> dict:
    from distill.cluster.launch import fit
    from distill.cluster.storage import LocalStorage

    metrics = fit(spec, LocalStorage(run_dir)).metrics
    return {k: float(v) for k, v in metrics.items() if k == "samples_per_s" or k.startswith("ms_")}


def _spec(args: argparse.Namespace, zero_stage: int):
    return preflight(
        load_spec(
            None,
            [
                f"training.steps={args.steps}",
                f"training.batch_size={args.batch_size}",
                f"training.checkpoint_every={args.steps}",
                f"training.eval_every={args.steps}",
                f"training.log_every={args.steps}",
                f"deepspeed.zero_stage={zero_stage}",
                f"data.max_length={args.max_length}",
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="per worker")
    parser.add_argument("--zero-stages", type=int, nargs="+", default=[2])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default="bench/results/ray_vs_plain.json")
    args = parser.parse_args()
    spec = _spec(args, args.zero_stages[0])
    threads = spec.scaling.num_workers * spec.scaling.cpus_per_worker
    # Plain runs bracket the Ray runs so drift in machine load shows up as their spread.
    plain = [plain_loop(spec, args.steps, threads)]
    ray_runs = {}
    for stage in args.zero_stages:
        with tempfile.TemporaryDirectory() as run_dir:
            ray_runs[f"zero{stage}"] = ray_job(_spec(args, stage), run_dir)
    plain.append(plain_loop(spec, args.steps, threads))
    plain_sps = sum(p["samples_per_s"] for p in plain) / len(plain)
    result = {
        "plain": plain,
        "plain_samples_per_s_mean": plain_sps,
        "ray_deepspeed": ray_runs,
        "ratio": {k: v["samples_per_s"] / plain_sps for k, v in ray_runs.items()},
        "steps": args.steps,
        "global_batch": args.batch_size * spec.scaling.num_workers,
        "workers": spec.scaling.num_workers,
        "threads": threads,
        "max_length": args.max_length,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
