"""Epoch time with the teacher-output cache against recomputing the teacher, as a ratio
measured in one run.

    python -m bench.teacher_cache [--rows 2000] [--epochs 1] [--out bench/results/teacher_cache.json]

The job is the sweep example's (examples/sweep_depth_width.yaml): the packaged
all-MiniLM-L6-v2 teacher, SST-2 + STS-B training sentences, hidden MSE on uniformly mapped
layers plus the pooled losses, a width-sliced student (`--student`, default 3 x 384), batch 64, fp32, AdamW,
2 threads. The cache is built once (`prepare_cache`, the code path `distill tune` uses),
then one process trains on the same batches in both modes, alternating mode every step, so
machine noise (this machine is shared) hits both modes alike. Epoch time per mode = the sum
of that mode's step times (teacher outputs, forward, backward, optimizer step) over one
pass of the rows. The cache build is reported beside it, as the number of epochs it pays
back in.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

PHASES = ("teacher", "forward", "backward", "step")


def _spec(rows: int, student: dict):
    from distill.cluster.sweep_spec import ParamSpec, apply_params, load_sweep
    from distill.core.spec import JobSpec
    from distill.jobs.preflight import preflight
    from distill.jobs.sweep_check import check_sweep

    sweep = load_sweep("examples/sweep_depth_width.yaml")
    sweep = sweep.model_copy(update={"space": {"student.layers": ParamSpec(grid=[3])}})
    raw = apply_params(
        check_sweep(sweep).base,
        {
            "student": student,
            "data": {"max_train_samples": rows},
        },
    )
    return preflight(JobSpec.model_validate(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--student", default="3,384,12,1536", help="layers,hidden,heads,ffn (width_slice)"
    )
    parser.add_argument("--out", default="bench/results/teacher_cache.json")
    args = parser.parse_args()

    from distill.cluster.job_data import train_eval_texts
    from distill.cluster.storage import LocalStorage
    from distill.cluster.teacher_cache import open_cache, prepare_cache
    from distill.core.data import collate, tokenize
    from distill.core.families import FAMILIES
    from distill.core.teacher import load_teacher
    from distill.core.teacher_cache import INDEX_COLUMN, plan_for

    torch.set_num_threads(args.threads)
    layers, hidden, heads, ffn = (int(v) for v in args.student.split(","))
    student = {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn}
    spec = _spec(args.rows, student)
    teacher, tokenizer = load_teacher(spec.teacher.name)
    torch.manual_seed(spec.training.seed)
    model = FAMILIES["encoder"].trainable(spec, teacher, None)
    plan = plan_for(model.objective.weights, model.objective.pairs)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        info = prepare_cache(spec, LocalStorage(tmp), plan)
        cache = open_cache(info, spec)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.training.learning_rate
    )
    train, _ = train_eval_texts(spec)
    rows = tokenize(train, tokenizer, spec.data.max_length)
    rows = rows.add_column(INDEX_COLUMN, list(range(len(rows))))
    loader = DataLoader(
        rows,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        collate_fn=collate(tokenizer),
        generator=torch.Generator().manual_seed(0),
    )
    spent = {mode: dict.fromkeys(PHASES, 0.0) for mode in ("recompute", "cache")}
    steps = {"recompute": 0, "cache": 0}
    model.train()
    for epoch in range(args.epochs):
        for i, batch in enumerate(loader):
            index = batch.pop(INDEX_COLUMN)
            # Each batch runs once in each mode, the order alternating, so both modes see
            # the same rows and the same machine load.
            for mode in ("recompute", "cache") if i % 2 == 0 else ("cache", "recompute"):
                marks = [time.perf_counter()]
                if mode == "cache":
                    t_out = cache.lookup(index, batch["attention_mask"])
                else:
                    t_out = FAMILIES["encoder"].teacher_outputs(model, teacher, None, batch)
                marks.append(time.perf_counter())
                loss, _ = model(batch, t_out)
                marks.append(time.perf_counter())
                optimizer.zero_grad()
                loss.backward()
                marks.append(time.perf_counter())
                optimizer.step()
                marks.append(time.perf_counter())
                if epoch > 0 or i >= 2:  # warm-up steps of both modes are not timed
                    for phase, begin, end in zip(PHASES, marks, marks[1:]):
                        spent[mode][phase] += end - begin
                    steps[mode] += 1
        print(f"[bench] epoch {epoch}: {json.dumps(spent)}", flush=True)
    per_epoch = {m: sum(spent[m].values()) / steps[m] * (len(rows) // args.batch) for m in spent}
    result = {
        "benchmark": "teacher_cache",
        "rows": len(rows),
        "batch": args.batch,
        "threads": args.threads,
        "student": {**student, "init": "width_slice"},
        "objective": {"weights": spec.objective.weights, "teacher_layers": list(plan.layers)},
        "cache": {k: info[k] for k in ("key", "rows", "build_s", "size_mib")},
        "timed_steps": steps,
        "ms_per_step": {m: {p: 1000 * spent[m][p] / steps[m] for p in PHASES} for m in spent},
        "epoch_s": per_epoch,
        "speedup": per_epoch["recompute"] / per_epoch["cache"],
        "break_even_epochs": info["build_s"] / (per_epoch["recompute"] - per_epoch["cache"]),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {k: result[k] for k in ("ms_per_step", "epoch_s", "speedup", "break_even_epochs")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
