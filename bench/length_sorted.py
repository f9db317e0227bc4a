"""Length-sorted batches vs the input order in the report's latency phase: the whole
`latency_section` call (ONNX export and checks, batch-1 and batch-32 rounds on PyTorch,
ONNX and ONNX int8) on the quickstart's own held-out texts, with `SentenceEncoder` and
`OnnxEncoder` batching rows longest first (now, as sentence-transformers' `encode` does) or
in the order given (before), alternated in one invocation.

    python bench/length_sorted.py --student /tmp/qs/run3/student --out bench/results/length_sorted.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.cluster.job_data import train_eval_texts
from distill.core import export, onnx_export
from distill.core.data import by_length
from distill.core.spec_loading import load_spec
from distill.core.teacher import PACKAGED_TEACHER, resolve_teacher
from distill.jobs.serving import latency_section


def _input_order(texts):
    return list(texts), torch.arange(len(texts))


def _use(order) -> None:
    export.by_length = onnx_export.by_length = order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="a quickstart run's student/ folder")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spec = load_spec(None, [])  # the quickstart's defaults: its held-out rows, rounds, lengths
    _, held_out = train_eval_texts(spec)
    teacher = resolve_teacher(PACKAGED_TEACHER)
    latency_section(spec, teacher, args.student, held_out)  # the teacher's ONNX graphs, cached
    runs = []
    for repeat in range(args.repeats):
        for name, order in (("input order", _input_order), ("length-sorted", by_length)):
            _use(order)
            started = time.perf_counter()
            section = latency_section(spec, teacher, args.student, held_out)
            wall = time.perf_counter() - started
            b = section["backends"]
            row = {
                "order": name,
                "repeat": repeat,
                "phase_s": round(wall, 1),
                **{
                    f"{backend} {model} batch32/s": round(b[backend][model]["batch32_per_s"], 1)
                    for backend in b
                    for model in ("teacher", "student")
                },
                "pytorch teacher p50 ms": round(b["pytorch"]["teacher"]["p50_ms"], 1),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    _use(by_length)
    if args.out:
        args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
