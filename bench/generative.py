"""Generative distillation benchmark: a small teacher trained here from scratch, a ~2.2x
smaller student, KD against no KD on the same budget (same init, data order, steps and
learning rate). In-process, with the job's own model builder, losses, batches and
evaluation (`distill.core.generative_family`), one thread per family, so both
families run side by side on the 2-core machine.

    python -m bench.generative --family causal  [--out bench/results/generative_causal.json]
    python -m bench.generative --family seq2seq [--out bench/results/generative_seq2seq.json]
    python -m bench.generative --table bench/results/generative_*.json

causal: the packaged tiny GPT-2 architecture (4 layers x 128, 2,048-token BPE) trained with
the causal-LM loss on the built-in docstring corpus (500 steps of 16 x 48 tokens); student:
1 layer x 128 initialised from teacher layer 0 and the teacher's embeddings. Arms (250
steps each): `lm` (no KD), `kd_fkl` (0.5 lm + 0.5 forward KL), `kd_rkl` (reverse KL),
`kd_jsd` (JSD, beta 0.5). Quality: held-out perplexity.
seq2seq: the packaged tiny BART (3+3 layers x 128) pre-trained by text infilling, then
fine-tuned on the keyword-compression task (`builtin:docstring-keywords`); student: 1+1
layers initialised from the teacher's last encoder and last decoder layer (`uniform_map`
with one layer) and its embeddings. Arms: `lm` (no KD: references), `word_kd` (0.5 lm + 0.5 forward KL on the
decoder outputs), `seq_kd` (lm on the teacher's greedy outputs), `word_seq_kd` (both).
Quality: BLEU / chrF of greedy generations on held-out pairs (sacrebleu) and perplexity.
Speed: generated tokens/s of the student vs the teacher, interleaved, in the same process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader

from distill.cluster.job_data import train_eval_texts
from distill.core.family_registry import family_of
from distill.core.generative import generative_collate, tokenize_generative
from distill.core.generative_eval import (
    bleu_chrf,
    generate_texts,
    generation_throughput,
    perplexity,
)
from distill.core.spec_loading import load_spec
from distill.core.student import count_parameters
from distill.core.teacher import freeze, load_teacher

FAMILIES = {
    "causal": {
        "teacher": "builtin:tiny-gpt2",
        "student": ["student.layers=1", "student.init=first_k"],
        "pretrain_data": ["data.train.path=builtin:docstrings"],
        "task_data": None,
        "arms": {
            "lm": {"lm": 1.0},
            "kd_fkl": {"lm": 0.5, "lm_kl": 0.5},
            "kd_rkl": {"lm": 0.5, "lm_reverse_kl": 0.5},
            "kd_jsd": {"lm": 0.5, "lm_jsd": 0.5},
        },
    },
    "seq2seq": {
        "teacher": "builtin:tiny-bart",
        "student": ["student.layers=1", "student.decoder_layers=1", "student.init=uniform_map"],
        "pretrain_data": ["data.train.path=builtin:docstrings"],
        "task_data": [
            "data.train.path=builtin:docstring-keywords",
            "task={type: seq2seq, target_column: target}",
        ],
        "arms": {
            "lm": {"lm": 1.0},
            "word_kd": {"lm": 0.5, "lm_kl": 0.5},
            "seq_kd": {"lm": 1.0},
            "word_seq_kd": {"lm": 0.5, "lm_kl": 0.5},
        },
    },
}
COMMON = [
    "objective.weights={lm: 1.0}",
    "data.max_length=48",
    "training.batch_size=16",
    "training.seed=1",
    "data.max_eval_samples=256",
]


def _spec(teacher: str, overrides: list[str]):
    return load_spec(None, [f"teacher.name={teacher}", *COMMON, *overrides])


def train(spec, kind: str, teacher, tokenizer, steps: int, lr: float, rows=None, previous=None):
    """The job's training step in one process: AdamW, linear warm-up then decay."""
    family = family_of(teacher.config)
    spec = family.resolve_stage(
        spec, kind, teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    torch.manual_seed(spec.training.seed)
    model = family.trainable(spec, teacher, tokenizer, kind=kind)
    if previous is not None:
        model.student.load_state_dict(previous.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(steps // 10, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(steps - warm, 1)))
    )
    train_rows = rows if rows is not None else train_eval_texts(spec)[0]
    loader = DataLoader(
        tokenize_generative(train_rows, tokenizer, spec.data.max_length),
        batch_size=spec.training.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=generative_collate(tokenizer),
        generator=torch.Generator().manual_seed(1),
    )
    generator = torch.Generator().manual_seed(7)
    model.train()
    step, started, losses = 0, time.perf_counter(), []
    while step < steps:
        for batch in loader:
            batch = family.prepare_batch(model, batch, generator)
            loss, _ = model(batch, family.teacher_outputs(model, teacher, None, batch))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
            step += 1
            if step >= steps:
                break
    model.student.eval()
    return model.student, {
        "steps": steps,
        "first_loss": losses[0],
        "final_loss": sum(losses[-20:]) / 20,
        "train_s": time.perf_counter() - started,
    }


def _rows(ds) -> dict:
    out = {"text": list(ds["text"])}
    if "target" in ds.column_names:
        out["target"] = list(ds["target"])
    return out


def run(family: str, teacher_steps: int, steps: int, pretrain_steps: int | None = None) -> dict:
    f = FAMILIES[family]
    torch.set_num_threads(1)
    arch, tokenizer = load_teacher(f["teacher"], seed=1)
    result: dict = {
        "family": family,
        "teacher_steps": teacher_steps,
        "student_steps": steps,
        "pretrain_steps": pretrain_steps if pretrain_steps is not None else teacher_steps,
        "threads": 1,
        "arms": {},
    }
    t0 = time.perf_counter()
    pre_spec = _spec(f["teacher"], f["pretrain_data"])
    pretrain_steps = teacher_steps if pretrain_steps is None else pretrain_steps
    teacher = arch
    if pretrain_steps:
        teacher, log = train(pre_spec, "pretrain", arch, tokenizer, pretrain_steps, 1e-3)
        result["teacher_pretrain"] = log
    eval_spec = pre_spec
    if f["task_data"]:
        task_spec = _spec(f["teacher"], f["task_data"])
        lr = 5e-4 if pretrain_steps else 1e-3  # from scratch: the pre-training rate
        teacher, log = train(task_spec, "finetune", freeze(teacher), tokenizer, teacher_steps, lr)
        result["teacher_finetune"] = log
        eval_spec = task_spec
    teacher = freeze(teacher)
    train_rows, eval_rows = train_eval_texts(eval_spec)
    rows = _rows(eval_rows)
    seq_rows = None
    if family == "seq2seq":
        started = time.perf_counter()
        sources = list(train_rows["text"])
        targets = generate_texts(
            teacher,
            tokenizer,
            sources,
            num_beams=1,
            max_new_tokens=32,
            batch_size=64,
            max_length=48,
        )
        targets = [t or r for t, r in zip(targets, train_rows["target"])]
        seq_rows = datasets.Dataset.from_dict({"text": sources, "target": targets})
        result["teacher_generation_s"] = time.perf_counter() - started

    def evaluate(model) -> dict:
        out = {"perplexity": perplexity(model, tokenizer, rows, max_length=48, seed=1)}
        if family == "seq2seq":
            hyps = generate_texts(model, tokenizer, rows["text"], max_new_tokens=32, max_length=48)
            out.update(bleu_chrf(hyps, rows["target"]))
        return out

    result["teacher"] = {"parameters": count_parameters(teacher), **evaluate(teacher)}
    spec = _spec(f["teacher"], (f["task_data"] or f["pretrain_data"]) + f["student"])
    students = {}
    for arm, weights in f["arms"].items():
        arm_spec = spec.model_copy(
            update={"objective": spec.objective.model_copy(update={"weights": weights})}
        )
        arm_rows = seq_rows if arm.startswith(("seq_kd", "word_seq")) else None
        student, log = train(arm_spec, "distill", teacher, tokenizer, steps, 1e-3, rows=arm_rows)
        students[arm] = student
        result["arms"][arm] = {"parameters": count_parameters(student), **log, **evaluate(student)}
        print(family, arm, json.dumps(result["arms"][arm]), flush=True)
    texts = rows["text"][:64]
    speed = generation_throughput(
        {"teacher": teacher, "student": students["lm"]},
        tokenizer,
        texts,
        new_tokens=32,
        rounds=3,
        batch_size=16,
    )
    result["speed_tokens_per_s"] = speed
    result["speedup"] = speed["student"] / speed["teacher"]
    result["compression"] = result["teacher"]["parameters"] / result["arms"]["lm"]["parameters"]
    result["wall_s"] = time.perf_counter() - t0
    return result


def table(paths: list[str]) -> str:
    lines = [
        "| family | arm | params (teacher / student) | perplexity (teacher / student, retention) | BLEU (teacher / student, retention) | gen. speedup |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in paths:
        r = json.loads(Path(path).read_text())
        t = r["teacher"]
        for arm, a in r["arms"].items():
            ppl = f"{t['perplexity']:.1f} / {a['perplexity']:.1f} ({t['perplexity'] / a['perplexity']:.3f})"
            bleu = (
                f"{t['bleu']:.1f} / {a['bleu']:.1f} ({a['bleu'] / t['bleu']:.3f})"
                if "bleu" in a
                else "–"
            )
            lines.append(
                f"| {r['family']} | {arm} | {t['parameters']:,} / {a['parameters']:,} | {ppl} | {bleu} | {r['speedup']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=sorted(FAMILIES))
    parser.add_argument("--teacher-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument(
        "--pretrain-steps", type=int, help="seq2seq: denoising steps before fine-tuning (0: none)"
    )
    parser.add_argument("--out")
    parser.add_argument("--table", nargs="*")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    result = run(args.family, args.teacher_steps, args.steps, args.pretrain_steps)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
