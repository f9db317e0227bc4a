"""`report.json`: how good, how small and how fast the student is against its teacher.

The schema is documented in docs/report.md; `SCHEMA_VERSION` changes on any breaking change.
`distill report RUN_DIR` prints it as a table.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoConfig

from distill.core.family_registry import family_of
from distill.core.spec import JobSpec
from distill.core.teacher import resolve_teacher
from distill.jobs.phases import phase_line

SCHEMA_VERSION = 1


def training_section(spec: JobSpec, train_state: dict) -> dict:
    """The report's `training` block: steps, first/final (eval) loss, samples/s, setup."""
    history = train_state.get("history", [])
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {
        "steps": train_state.get("step"),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "first_eval_loss": evals[0] if evals else None,
        "final_eval_loss": evals[-1] if evals else None,
        "samples_per_s": history[-1].get("samples_per_s") if history else None,
        "num_workers": spec.scaling.num_workers,
        "zero_stage": spec.deepspeed.zero_stage,
        "precision": spec.deepspeed.precision,
    }


def paths_section(run_dir: Path | str, checkpoint_path: str) -> dict:
    """The report's `paths` block: the final checkpoint, the export and the saved config."""
    return {
        "checkpoint": checkpoint_path,
        "student": f"{run_dir}/student",
        "config": f"{run_dir}/config.yaml",
    }


def build_report(
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
    timeline=None,
) -> dict:
    """Evaluate teacher and exported student in this process and assemble the report; the
    teacher's family supplies the quality, task, speed, size and export-check sections.
    `run_dir` is the run's location as written in the report (a path or an s3:// URI);
    `student_dir` a local copy of the export when the run folder is not local;
    eval_rows: the held-out `datasets.Dataset` (`text`, and `label` or `target`); timeline:
    the run's `jobs.phases.Timeline`, marked after the evaluation and the latency rounds."""
    teacher_dir = teacher_dir or resolve_teacher(spec.teacher.name)
    student_dir = student_dir or Path(run_dir) / "student"
    family = family_of(AutoConfig.from_pretrained(teacher_dir))
    latency = None
    if family.name == "encoder":
        from distill.jobs.serving import latency_section

        latency = latency_section(spec, teacher_dir, student_dir, eval_rows)
    if timeline is not None:
        timeline.mark("latency")
    # The latency rounds timed PyTorch's batch throughput already: not measured twice.
    sections = family.evaluate(
        spec, teacher_dir, student_dir, eval_rows, probe, speed=pytorch_speed(latency)
    )
    if timeline is not None:
        timeline.mark("evaluate")
    report = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": spec.output.name,
            "dir": str(run_dir),
            "status": "completed",
            "wall_time_s": None,  # set last, so it includes this evaluation
        },
        # Where the teacher lived on the workers (partition, dtype, parameters per rank).
        "teacher": {**sections["teacher"], "placement": train_state.get("teacher_placement")},
        "student": sections["student"],
        "size": sections["size"],
        "quality": sections["quality"],
        "task": sections["task"],
        "stages": stages or [],
        "speed": sections["speed"],
        "training": training_section(spec, train_state),
        "export_check": sections["export_check"],
        "teacher_check": train_state.get("teacher_fingerprint"),
        "paths": paths_section(run_dir, checkpoint_path),
    }
    if latency is not None:
        report["latency"] = latency
    report["run"]["wall_time_s"] = time.perf_counter() - started
    return report


def pytorch_speed(latency: dict | None) -> dict | None:
    """The speed section's figures from the latency rounds' PyTorch backend (sentences/s at
    `evaluation.batch_size`, measured interleaved with the other backends), or None when
    there are none to reuse (no latency section, or its threads differ from the run's)."""
    import torch

    if not latency or "pytorch" not in (latency.get("backends") or {}):
        return None
    settings = latency["settings"]
    if settings["threads"] != torch.get_num_threads():  # evaluation.latency_threads set
        return None
    rates = latency["backends"]["pytorch"]
    (key,) = (k for k in rates["teacher"] if k.startswith("batch") and k.endswith("_per_s"))
    return {
        "teacher": rates["teacher"][key],
        "student": rates["student"][key],
        "texts": settings["throughput_texts"],
        "threads": settings["threads"],
        "measured_in": "latency",
    }


def format_number(value, digits: int = 4) -> str:
    """A number for a table: floats to `digits` significant digits, ints with thousands
    separators, None as "-" (the run, sweep and model-card tables share it)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


_BACKEND_NAMES = {"pytorch": "PyTorch", "onnx": "ONNX", "onnx_int8": "ONNX int8"}


def latency_rows(latency: dict | None) -> list[tuple[str, str, str, str]]:
    """Table rows of report.json's `latency`: batch-1 p50/p95 and batch-32 throughput per
    backend (student/teacher: the student's speed-up)."""
    rows: list[tuple[str, str, str, str]] = []
    for backend, models in ((latency or {}).get("backends") or {}).items():
        name = _BACKEND_NAMES.get(backend, backend)
        t, s = models.get("teacher", {}), models.get("student", {})
        for key, label in (("p50_ms", "p50"), ("p95_ms", "p95")):
            if key in t and key in s:
                rows.append(
                    (
                        f"batch-1 {label} ms ({name})",
                        format_number(t[key], 3),
                        format_number(s[key], 3),
                        format_number(t[key] / s[key], 3) + "x faster" if s[key] else "-",
                    )
                )
        bulk = next((k for k in s if k.endswith("_per_s")), None)
        if bulk and bulk in t:
            size = bulk.removeprefix("batch").removesuffix("_per_s")
            rows.append(
                (
                    f"batch-{size} texts/s ({name})",
                    format_number(t[bulk], 4),
                    format_number(s[bulk], 4),
                    format_number(s[bulk] / t[bulk], 3) if t[bulk] else "-",
                )
            )
    return rows


def format_table(report: dict) -> str:
    """A plain-text table of the headline numbers."""
    q, sp, sz, tr = report["quality"], report["speed"], report["size"], report["training"]
    rows = [
        ("", "teacher", "student", "student/teacher"),
        (
            "parameters",
            format_number(sz["teacher_parameters"]),
            format_number(sz["student_parameters"]),
            format_number(sz["student_parameters"] / sz["teacher_parameters"], 3),
        ),
        (
            f"{q['metric']} ({q['n']})",
            format_number(q["teacher"]),
            format_number(q["student"]),
            format_number(q["retention"], 3),
        ),
        (
            f"throughput ({sp['unit']})",
            format_number(sp["teacher"]),
            format_number(sp["student"]),
            format_number(sp["speedup"], 3),
        ),
    ]
    task = report.get("task")
    if task:
        rows.append(
            (
                f"task {task['metric']} ({task['n']})",
                format_number(task["teacher"]),
                format_number(task["student"]),
                format_number(task["retention"], 3),
            )
        )
    rows += latency_rows(report.get("latency"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    lines += [
        "",
        f"run {report['run']['name']}: {tr['steps']} steps, loss {format_number(tr['first_loss'])} -> "
        f"{format_number(tr['final_loss'])}, {format_number(tr['samples_per_s'])} samples/s on {tr['num_workers']} workers "
        f"(ZeRO-{tr['zero_stage']}, {tr['precision']}), wall {report['run']['wall_time_s']:.0f}s",
        f"student: {report['paths']['student']}",
    ]
    if line := phase_line(report["run"].get("phases")):
        lines.append(line)
    lines += memory_lines((report.get("teacher") or {}).get("placement"))
    if len(report.get("stages", [])) > 1:
        lines.append(
            "stages: "
            + " -> ".join(
                f"{s['name']} ({s['kind']}, {s['steps']} steps)" for s in report["stages"]
            )
        )
    return "\n".join(lines)


def memory_lines(placement: dict | None) -> list[str]:
    """The workers' whole-process memory (GiB) by phase, one column per rank, then each
    rank's whole-life peaks (RSS, anonymous, PSS); nothing when the run recorded none."""
    workers = (placement or {}).get("memory")
    if not workers:
        return []
    gib = lambda n: f"{n / 2**30:.2f}"  # noqa: E731
    head = ["worker memory (GiB, RSS)", *(f"rank {r}" for r in range(len(workers)))]
    rows = [head]
    for phase in [p["phase"] for p in workers[0]["phases"]]:
        cells = []
        for w in workers:
            hit = next((p for p in w["phases"] if p["phase"] == phase), None)
            cells.append(gib(hit["rss"]) if hit else "-")
        rows.append([phase, *cells])
    for key, label in (
        ("peak_rss", "peak RSS"),
        ("peak_anon", "peak anonymous"),
        ("peak_pss", "peak PSS"),
    ):
        rows.append([label, *(gib(w[key]) for w in workers)])
    width = [max(len(r[i]) for r in rows) for i in range(len(head))]
    teacher = f"teacher {placement.get('partition')}, {placement.get('dtype')}"
    return ["", f"{teacher}:"] + ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
