"""GPU check (never needed by CI): the single-GPU large-teacher case. One GPU worker, bf16,
NCCL; the teacher (>=1B parameters, GPT-2 XL shape, random weights) partitioned with ZeRO-3
and its partitions offloaded to CPU memory (`teacher.zero3.offload`: only the layer being
gathered visits the GPU, as for a teacher larger than the GPU), the student on the GPU;
~50 training steps. Prints real (non-padding) tokens/s, peak GPU memory, peak host RSS of
the worker and model FLOPs utilisation.

    bash bench/gpu_check.sh            # on a machine with a CUDA GPU and this repo installed

MFU counts 6 x student parameters (forward + backward) + 2 x teacher parameters (forward)
FLOPs per real trained token (`tokens_per_s` in metrics.jsonl counts attention-mask ones), against the GPU's dense bf16 peak (`--peak-tflops`, default the
H200's 989).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_memory import build_teacher, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    args = parser.parse_args()
    teacher = build_teacher(48, 1600, 25, 50257)
    extra = [
        "scaling.num_workers=1",
        "scaling.gpus_per_worker=1",
        "deepspeed.precision=bf16",
        "teacher.zero3.offload=true",
        "student.layers=6",
        "student.hidden=1024",
        "student.heads=16",
        f"training.steps={args.steps}",
        f"training.batch_size={args.batch_size}",
        "training.log_every=10",
        f"data.max_length={args.max_length}",
        "data.max_train_samples=4000",
    ]
    with tempfile.TemporaryDirectory(prefix="distill-gpu-check-") as tmp:
        row = run(teacher, "zero3", "bf16", Path(tmp) / "gpu", extra)
        if row["exit"] == 0:
            history = [
                json.loads(line)
                for line in (Path(tmp) / "gpu" / "metrics.jsonl").read_text().splitlines()
            ]
            report = json.loads((Path(tmp) / "gpu" / "report.json").read_text())
            tokens_per_s = history[-1]["tokens_per_s"]
            student = report["size"]["student_parameters"]
            flops = (6 * student + 2 * row["teacher_parameters"]) * tokens_per_s
            row.update(
                tokens_per_s=round(tokens_per_s),
                gpu_peak_gib=max(h.get("gpu_peak_mb", 0) for h in history) / 1024,
                host_peak_rss_gib=max(row["peak_rss_gib"]),
                mfu=flops / (args.peak_tflops * 1e12),
            )
    print(json.dumps(row, indent=2))
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
