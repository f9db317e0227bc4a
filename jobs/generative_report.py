"""`report.json` for generative students (GPT-2-style decoders, BART-style seq2seq): same
top-level layout as `distill.jobs.report` (docs/report.md), with quality as held-out perplexity
(lower is better; retention = teacher perplexity / student perplexity) or, for seq2seq
tasks, BLEU of greedy generations against the references, and speed as generated tokens/s
of student vs teacher measured in this process, interleaved."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from distill.cluster.run_files import PROBE_TEXTS
from distill.core.generative import architecture_size, load_exported, model_family, probe_logits
from distill.core.generative_eval import (
    bleu_chrf,
    generate_texts,
    generation_throughput,
    perplexity,
)
from distill.core.spec import JobSpec
from distill.core.student import count_parameters
from distill.jobs.report import SCHEMA_VERSION, paths_section, training_section


def _rows(eval_rows) -> dict[str, list[str]]:
    rows = {"text": list(eval_rows["text"])}
    if "target" in eval_rows.column_names:
        rows["target"] = list(eval_rows["target"])
    return rows


def build_generative_report(
    spec: JobSpec,
    run_dir: Path | str,
    eval_rows,
    train_state: dict,
    probe: torch.Tensor,
    checkpoint_path: str,
    started: float,
    *,
    student_dir: Path | None = None,
    teacher_dir: str | None = None,
    stages: list[dict] | None = None,
) -> dict:
    """Evaluate teacher and exported student in this process and assemble the report."""
    student_dir = student_dir or Path(run_dir) / "student"
    teacher, student = load_exported(teacher_dir), load_exported(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    family = model_family(teacher.config)
    e, max_len = spec.evaluation, spec.data.max_length
    rows = _rows(eval_rows)
    export_diff = float(
        (probe_logits(student, tokenizer, PROBE_TEXTS, max_len) - probe).abs().max()
    )
    ppl = {
        who: perplexity(
            m,
            tokenizer,
            rows,
            max_length=max_len,
            batch_size=e.batch_size,
            noise_ratio=spec.objective.noise_ratio,
            seed=spec.training.seed,
        )
        for who, m in (("teacher", teacher), ("student", student))
    }
    quality = {
        "metric": "perplexity",
        "split": "held-out",
        "n": len(rows["text"]),
        "teacher": ppl["teacher"],
        "student": ppl["student"],
        "retention": ppl["teacher"] / ppl["student"],
    }
    task = None
    if family == "seq2seq" and "target" in rows:
        scores = {
            who: bleu_chrf(
                generate_texts(
                    m,
                    tokenizer,
                    rows["text"],
                    max_new_tokens=e.generation_length * 2,
                    batch_size=e.batch_size,
                    max_length=max_len,
                ),
                rows["target"],
            )
            for who, m in (("teacher", teacher), ("student", student))
        }
        task = {
            "metric": "bleu",
            "n": len(rows["text"]),
            "teacher": scores["teacher"]["bleu"],
            "student": scores["student"]["bleu"],
            "retention": scores["student"]["bleu"] / scores["teacher"]["bleu"]
            if scores["teacher"]["bleu"]
            else None,
            "chrf": {who: s["chrf"] for who, s in scores.items()},
        }
    texts = (rows["text"] * (e.throughput_texts // max(len(rows["text"]), 1) + 1))[
        : e.throughput_texts
    ]
    speed = generation_throughput(
        {"teacher": teacher, "student": student},
        tokenizer,
        texts,
        new_tokens=e.generation_length,
        rounds=e.throughput_rounds,
        batch_size=e.batch_size,
    )
    t_params, s_params = count_parameters(teacher), count_parameters(student)
    t_size, s_size = architecture_size(teacher.config), architecture_size(student.config)
    report = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": spec.output.name,
            "dir": str(run_dir),
            "status": "completed",
            "wall_time_s": None,
        },
        "teacher": {
            "name": spec.teacher.name,
            "family": family,
            "parameters": t_params,
            "layers": t_size.layers,
            "decoder_layers": t_size.decoder_layers,
            "hidden": t_size.hidden,
        },
        "student": {
            "parameters": s_params,
            "layers": s_size.layers,
            "decoder_layers": s_size.decoder_layers,
            "hidden": s_size.hidden,
            "heads": s_size.heads,
            "ffn": s_size.ffn,
            "init": spec.student.init,
            "kind": spec.student.kind,
        },
        "size": {
            "teacher_parameters": t_params,
            "student_parameters": s_params,
            "compression": t_params / s_params,
        },
        "quality": quality,
        "task": task,
        "stages": stages or [],
        "speed": {
            "unit": "tokens/s",
            "teacher": speed["teacher"],
            "student": speed["student"],
            "speedup": speed["student"] / speed["teacher"],
            "texts": len(texts),
            "new_tokens": e.generation_length,
            "batch_size": e.batch_size,
            "threads": torch.get_num_threads(),
        },
        "training": training_section(spec, train_state),
        "export_check": {
            "max_abs_diff": export_diff,
            "probe_texts": len(PROBE_TEXTS),
            "compared": "LM logits",
        },
        "teacher_check": train_state.get("teacher_fingerprint"),
        "paths": paths_section(run_dir, checkpoint_path),
    }
    report["run"]["wall_time_s"] = time.perf_counter() - started
    return report
