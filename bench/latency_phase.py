"""The report's latency phase as a run pays it: the whole `latency_section` call (the
student's ONNX export and int8 quantization, both export checks, the batch-1 rounds and the
batch-32 rounds on PyTorch, ONNX and ONNX int8) with the run's defaults, timed end to end,
with onnxruntime's intra-op threads spinning after each call (its default) and sleeping
(`session.intra_op.allow_spinning=0`), alternated in one invocation so both see the same
machine. The latency rounds alternate ONNX and PyTorch calls in one process: a spinning
onnxruntime pool keeps the cores busy into PyTorch's next call.

    python bench/latency_phase.py --student /tmp/qs/run2/student --out bench/results/latency_phase.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.core import onnx_export
from distill.core.data import BUILTIN_STS, load_sts_pairs
from distill.core.spec_loading import load_spec
from distill.core.teacher import PACKAGED_TEACHER, resolve_teacher
from distill.jobs.serving import latency_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="a student folder (a run's student/)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spec = load_spec(None, [f"data.max_length={args.max_length}"])  # the run's defaults
    rows = {"text": load_sts_pairs(BUILTIN_STS).first}
    teacher = resolve_teacher(PACKAGED_TEACHER)
    latency_section(spec, teacher, args.student, rows)  # the teacher's ONNX graphs, cached
    runs = []
    for repeat in range(args.repeats):
        for spinning in (True, False) if repeat % 2 == 0 else (False, True):
            onnx_export.SPINNING = spinning
            start = time.perf_counter()
            section = latency_section(spec, teacher, args.student, rows)
            wall = time.perf_counter() - start
            backends = section["backends"]
            row = {
                "spinning": spinning,
                "wall_s": round(wall, 2),
                "p50_ms": {
                    f"{b}/{m}": round(backends[b][m]["p50_ms"], 2)
                    for b in backends
                    for m in backends[b]
                },
                "batch32_per_s": {
                    f"{b}/{m}": round(backends[b][m]["batch32_per_s"], 1)
                    for b in backends
                    for m in backends[b]
                },
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "teacher": PACKAGED_TEACHER,
        "student": args.student,
        "threads": torch.get_num_threads(),
        "settings": section["settings"],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
