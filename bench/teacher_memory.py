"""Teacher memory per worker, replicated vs ZeRO-3-partitioned, on a >=1B decoder teacher.

    python bench/teacher_memory.py [--layers 48 --hidden 1600 --heads 25]   # GPT-2 XL shape

Builds the teacher once from a config with random weights (no download) into
`bench/.cache/teacher-<shape>/` (bf16 safetensors + the packaged GPT-2-style tokenizer), then
runs the same `distill run` (a 2-layer, 512-wide student, `lm` + `lm_kl`, a handful of steps,
2 Ray Train workers, ZeRO-2 student) for each placement:

- `replicate` fp32 / bf16 and `zero3` fp32 / bf16: resident teacher parameter bytes per
  worker (from the run's `teacher.placement`), each worker's peak anonymous RSS (sampled at
  every logged step) and peak RSS, and the teacher forward time per step (`ms_teacher`);
- a per-worker memory limit below the whole teacher (`scaling.memory_per_worker_gb`):
  `replicate` must be refused by preflight (exit 2) and `zero3` must complete;
- `--two-node` (`--two-node-only`: that row alone): the zero3 bf16 run on a 2-node local Ray cluster (two `ray start` nodes on
  this machine, one CPU each, `placement_strategy: SPREAD`), the partitions on both nodes.

Each run is its own process (memory does not carry over). Results: JSON (`--out`) and the
table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_teacher(layers: int, hidden: int, heads: int, vocab: int) -> Path:
    folder = ROOT / "bench" / ".cache" / f"teacher-gpt2-{layers}x{hidden}"
    if (folder / "model.safetensors.index.json").is_file() or (
        folder / "model.safetensors"
    ).is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from distill.core.teacher import resolve_teacher

    arch = resolve_teacher("builtin:tiny-gpt2")
    config = GPT2Config(
        n_layer=layers,
        n_embd=hidden,
        n_head=heads,
        vocab_size=vocab,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    print(
        f"teacher: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True
    )
    model.save_pretrained(folder, max_shard_size="1GB")
    AutoTokenizer.from_pretrained(arch).save_pretrained(folder)
    return folder


def run(teacher: Path, partition: str, dtype: str, out: Path, extra: list[str], env=None) -> dict:
    """One `distill run`; its exit code, wall time, report and per-step metrics."""
    sets = [
        f"teacher.name={teacher}",
        f"teacher.partition={partition}",
        f"teacher.dtype={dtype}",
        "objective.weights={lm: 1.0, lm_kl: 1.0}",
        "student.layers=2",
        "student.hidden=512",
        "student.heads=8",
        "student.init=first_k",
        "data.train.path=builtin:docstrings",
        "data.max_length=32",
        "data.max_train_samples=64",
        "data.max_eval_samples=4",
        "training.steps=5",
        "training.batch_size=2",
        "training.log_every=1",
        "training.eval_every=100",
        "training.checkpoint_every=100",
        "training.warmup_steps=1",
        "evaluation.throughput_texts=2",
        "evaluation.throughput_rounds=1",
        "evaluation.generation_length=2",
        "evaluation.batch_size=2",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", "run", "--output", str(out), "--set", *sets],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    wall = time.perf_counter() - started
    row = {
        "partition": partition,
        "dtype": dtype,
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
    }
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        return row
    report = json.loads((out / "report.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    placement = report["teacher"]["placement"]
    size = 4 if dtype == "fp32" else 2
    timed = [h for h in history if h.get("ms_teacher")]
    nodes = set()
    reports = out / "train" / "reports.jsonl"
    for line in reports.read_text().splitlines():
        nodes |= set(json.loads(line).get("nodes") or [])
    row.update(
        teacher_parameters=placement["parameters"],
        teacher_bytes_per_worker=[n * size for n in placement["parameters_per_rank"]],
        teacher_gib_per_worker=max(n * size for n in placement["parameters_per_rank"]) / 2**30,
        peak_rss_anon_gib=max(h["rss_anon_mb"] for h in history) / 1024,
        peak_rss_gib=max(h["rss_peak_mb"] for h in history) / 1024,
        teacher_ms_per_step=timed[-1]["ms_teacher"] if timed else None,
        step_ms=sum(timed[-1][f"ms_{p}"] for p in ("teacher", "forward", "backward", "step"))
        if timed
        else None,
        nodes=len(nodes),
        teacher_unchanged=report["teacher_check"]["unchanged"],
        preflight=placement.get("preflight"),  # its decision, reason and worker memory
    )
    return row


def two_node_cluster():
    """A head and a worker node of 1 CPU each, started with `ray start` on this machine, each
    with its own ports and temp dir (the test suite's `LocalCluster`), with token auth as a
    real cluster has it; (cluster, the environment that joins it: `RAY_ADDRESS` and the
    token). Stop it with `cluster.stop()` (or use it as a context manager)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.ray_cluster import LocalCluster

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    cluster = LocalCluster(head_cpus=1, env=auth)
    try:
        cluster.add_node(cpus=1)
    except BaseException:
        cluster.stop()
        raise
    return cluster, {**auth, "RAY_ADDRESS": cluster.gcs_address}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=1600)
    parser.add_argument("--heads", type=int, default=25)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--two-node", action="store_true")
    parser.add_argument(
        "--limits-only", action="store_true", help="only the memory-limit and 2-node rows"
    )
    parser.add_argument("--two-node-only", action="store_true", help="only the 2-node row")
    parser.add_argument("--out", default="bench/results/teacher_memory.json")
    args = parser.parse_args()
    teacher = build_teacher(args.layers, args.hidden, args.heads, args.vocab)
    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-teacher-memory-") as tmp:
        tmp = Path(tmp)
        placements = [
            ("replicate", "fp32"),
            ("zero3", "fp32"),
            ("replicate", "bf16"),
            ("zero3", "bf16"),
        ]
        skip = args.limits_only or args.two_node_only
        for partition, dtype in [] if skip else placements:
            rows.append(run(teacher, partition, dtype, tmp / f"{partition}-{dtype}", []))
            print(json.dumps(rows[-1]), flush=True)
        from transformers import AutoConfig, AutoModelForCausalLM

        from distill.core.teacher_plan import footprint

        config = AutoConfig.from_pretrained(teacher)
        whole_gib = footprint(config, AutoModelForCausalLM).parameters * 4 / 2**30
        limit = [f"scaling.memory_per_worker_gb={round(whole_gib * 0.9, 2)}"]  # below the teacher
        for partition in () if args.two_node_only else ("replicate", "zero3"):
            row = run(teacher, partition, "fp32", tmp / f"limit-{partition}", limit)
            rows.append({**row, "memory_per_worker_gb": round(whole_gib * 0.9, 2)})
            print(json.dumps(rows[-1]), flush=True)
        if args.two_node or args.two_node_only:
            cluster, joined = two_node_cluster()
            with cluster:
                row = run(
                    teacher,
                    "zero3",
                    "bf16",
                    tmp / "two-node",
                    ["scaling.placement_strategy=SPREAD"],
                    joined,
                )
                rows.append({**row, "cluster": "2 local nodes"})
                print(json.dumps(rows[-1]), flush=True)
    shape = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "vocab": args.vocab}
    Path(args.out).write_text(json.dumps({"teacher": shape, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
