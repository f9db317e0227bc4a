"""Serving speed of trained students against their teacher: batch-1 latency (p50, p95) and
batch-32 throughput on PyTorch, ONNX fp32 and ONNX int8, through the same code as
report.json's `latency` section (`distill.jobs.serving.latency_section`): teacher and student
timed interleaved in one process, tokenization included, on the packaged STS sample's
sentences (short captions, as a serving request would be).

    python bench/serving_latency.py --students sts_l3=runs/sts-l3/student \
        sts_small=runs/sts-small/student --out bench/results/serving_latency.json
    python bench/serving_latency.py --table --out bench/results/serving_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from distill.core.data import BUILTIN_STS, load_sts_pairs
from distill.core.spec_loading import load_spec
from distill.core.teacher import PACKAGED_TEACHER, resolve_teacher
from distill.jobs.serving import latency_section

BACKENDS = (("pytorch", "PyTorch"), ("onnx", "ONNX"), ("onnx_int8", "ONNX int8"))


def measure(students: dict[str, str], rounds: int, threads: int) -> dict:
    spec = load_spec(
        None,
        [
            "evaluation.latency=onnx",
            f"evaluation.latency_rounds={rounds}",
            f"evaluation.latency_threads={threads}",
            "evaluation.throughput_rounds=3",
            "evaluation.throughput_texts=256",
            "data.max_length=64",
        ],
    )
    texts = load_sts_pairs(BUILTIN_STS).first
    rows = {"text": texts}
    teacher = resolve_teacher(PACKAGED_TEACHER)
    out = {
        "teacher": PACKAGED_TEACHER,
        "texts": f"{BUILTIN_STS} first sentences",
        "threads": threads,
        "rounds": rounds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads available",
        "date": time.strftime("%Y-%m-%d"),
        "students": {},
    }
    for name, folder in students.items():
        section = latency_section(spec, teacher, folder, rows)
        out["students"][name] = {"folder": folder, **section}
        print(json.dumps({name: section["backends"]}, indent=1), flush=True)
    return out


def table(results: dict) -> str:
    lines = [
        "| model | backend | batch-1 p50 ms | batch-1 p95 ms | batch-32 sentences/s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, entry in results["students"].items():
        for who in ("teacher", "student"):
            label = f"teacher (vs {name})" if who == "teacher" else name
            for key, backend in BACKENDS:
                m = entry["backends"][key][who]
                lines.append(
                    f"| {label} | {backend} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | "
                    f"{m['batch32_per_s']:.0f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", nargs="*", default=[], help="NAME=STUDENT_FOLDER ...")
    parser.add_argument("--rounds", type=int, default=200, help="batch-1 calls per model")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, both backends")
    parser.add_argument("--out", default="bench/results/serving_latency.json")
    parser.add_argument("--table", action="store_true", help="print --out as markdown and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    students = dict(s.split("=", 1) for s in args.students)
    results = measure(students, args.rounds, args.threads)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
