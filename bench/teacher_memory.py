"""Teacher memory per worker, replicated vs ZeRO-3-partitioned, measured as the operator pays it.

    python bench/teacher_memory.py                       # 1.1B GPT-2-style decoder, N=2 and N=4, fp32
    python bench/teacher_memory.py --only 2:bf16         # one table
    python bench/teacher_memory.py --demo-3b             # a 3B Llama-style fp32 teacher that cannot fit replicated

The teacher is written once, with random weights, tensor by tensor into safetensors shards the
way the hub ships large models (`write_random_checkpoint`: the whole model is never built),
into `bench/.cache/`, in fp32. Each table then runs the same `distill run` (a 2-layer,
512-wide student, `lm` + `lm_kl`, a few steps, N Ray Train workers, student ZeRO-2) with:

- `cache`: the teacher not loaded at all on the workers (`teacher.cache.mode: auto`, its
  outputs read from a teacher-output cache built beforehand): the baseline;
- `replicate` and `zero3`, interleaved.

From each run's report.json (`teacher.placement.memory`, recorded by every worker from
/proc/self: `cluster.worker_memory`): each worker's peak RSS (VmHWM, whole life, load
included), peak anonymous RSS, peak PSS and the phase breakdown; the **teacher cost** is a
worker's peak RSS minus the baseline's (PSS likewise); the bound the issue sets is
1.25 x teacher bytes / N + the largest decoder layer's bytes. Beside each: preflight's
estimate of the worker peak (`distill.core.teacher_plan.estimate_worker_peak`) and the
teacher forward time per step. Each run is its own process (memory does not carry over).
Results: JSON (`--out`) and the tables in docs/benchmarks.md.
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


def write_random_checkpoint(
    config, auto_class, folder: Path, *, dtype=None, max_shard_bytes: int = 2 * 10**9, seed=0
) -> Path:
    """Save `config`'s architecture with random weights (normal, std 0.02; norms 1, biases 0)
    as sharded safetensors plus index, one shard in memory at a time: tensor shapes come
    from a meta-device model, and tied weights are written once."""
    import torch
    from safetensors.torch import save_file

    from distill.core.checkpoint_slices import INDEX_FILE, parameter_aliases
    from distill.core.teacher_plan import meta_model

    dtype = dtype or torch.float32
    folder.mkdir(parents=True, exist_ok=True)
    model = meta_model(config, auto_class)
    names = [(name, p.shape) for name, (p, _) in parameter_aliases(model).items()]
    names += [(n, b.shape) for n, b in model.named_buffers() if n in model.state_dict()]
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict] = [{}]
    sizes = [0]
    files = []

    def flush() -> None:
        if not shards[-1]:
            return
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        files.append((name, list(shards[-1])))
        shards[-1], sizes[-1] = {}, 0

    for name, shape in names:
        if name.endswith("bias"):
            t = torch.zeros(shape, dtype=dtype)
        elif len(shape) == 1:
            t = torch.ones(shape, dtype=dtype)
        else:
            t = torch.empty(shape, dtype=dtype).normal_(0, 0.02, generator=generator)
        nbytes = t.numel() * t.element_size()
        if sizes[-1] and sizes[-1] + nbytes > max_shard_bytes:
            flush()
        shards[-1][name], sizes[-1] = t, sizes[-1] + nbytes
    flush()
    total = len(files)
    weight_map, size = {}, 0
    for i, (name, keys) in enumerate(files, 1):
        final = f"model-{i:05d}-of-{total:05d}.safetensors"
        (folder / name).rename(folder / final)
        size += (folder / final).stat().st_size
        weight_map.update(dict.fromkeys(keys, final))
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1))
    config.save_pretrained(folder)
    return folder


def build_teacher(layers: int, hidden: int, heads: int, vocab: int) -> Path:
    """The benchmark's GPT-2-style decoder (fp32, 1 GB shards) and a GPT-2-style tokenizer."""
    folder = ROOT / "bench" / ".cache" / f"teacher-gpt2-{layers}x{hidden}-fp32"
    if not (folder / "model.safetensors.index.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

        from distill.core.teacher import resolve_teacher

        config = GPT2Config(
            n_layer=layers,
            n_embd=hidden,
            n_head=heads,
            vocab_size=vocab,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        )
        write_random_checkpoint(config, AutoModelForCausalLM, folder, max_shard_bytes=10**9)
        AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-gpt2")).save_pretrained(folder)
    return folder


def build_3b_teacher() -> Path:
    """A ~3B Llama-style decoder in fp32 (about 12 GiB: two replicas do not fit this
    machine's 24 GiB), in safetensors shards of at most 2 GB."""
    folder = ROOT / "bench" / ".cache" / "teacher-llama-3b-fp32"
    if not (folder / "model.safetensors.index.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

        from distill.core.teacher import resolve_teacher

        config = LlamaConfig(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            vocab_size=32000,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        write_random_checkpoint(config, AutoModelForCausalLM, folder, max_shard_bytes=2 * 10**9)
        AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-gpt2")).save_pretrained(folder)
    return folder


def run(
    teacher: Path, partition: str, dtype: str, out: Path, extra: list[str], env=None, steps=5
) -> dict:
    """One `distill run`; its exit code, wall time and every worker's memory record.
    partition `cache`: the teacher is not loaded on the workers (teacher-output cache)."""
    sets = [
        f"teacher.name={teacher}",
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
        f"training.steps={steps}",
        "training.batch_size=2",
        "training.log_every=1",
        "training.eval_every=100",
        "training.checkpoint_every=100",
        "training.warmup_steps=1",
        "evaluation.throughput_texts=2",
        "evaluation.throughput_rounds=1",
        "evaluation.generation_length=2",
        "evaluation.batch_size=2",
        *(
            ["teacher.cache.mode=auto", f"teacher.cache.location={out.parent / 'cache'}"]
            if partition == "cache"
            else [f"teacher.placement={partition}"]
        ),
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
    timed = [h for h in history if h.get("ms_teacher")]
    nodes = set()
    for line in (out / "train" / "reports.jsonl").read_text().splitlines():
        nodes |= set(json.loads(line).get("nodes") or [])
    workers = placement["memory"]
    gib = lambda n: round(n / 2**30, 3)  # noqa: E731
    row.update(
        teacher_parameters=placement["parameters"],
        teacher_gib_per_worker=gib(
            max(placement["parameters_per_rank"]) * (4 if dtype == "fp32" else 2)
        )
        if partition != "cache"
        else 0.0,
        loader=placement.get("loader"),
        peak_rss_gib=[gib(w["peak_rss"]) for w in workers],
        peak_anon_gib=[gib(w["peak_anon"]) for w in workers],
        peak_pss_gib=[gib(w["peak_pss"]) for w in workers],
        phases_rss_gib=[{p["phase"]: gib(p["rss"]) for p in w["phases"]} for w in workers],
        phases_peak_anon_gib=[
            {p["phase"]: gib(p["peak_anon"]) for p in w["phases"]} for w in workers
        ],
        teacher_ms_per_step=timed[-1]["ms_teacher"] if timed else None,
        step_ms=sum(timed[-1][f"ms_{p}"] for p in ("teacher", "forward", "backward", "step"))
        if timed
        else None,
        nodes=len(nodes),
        teacher_unchanged=report["teacher_check"]["unchanged"],
        preflight=placement.get("preflight"),  # its decision, reason, estimate, worker memory
    )
    return row


def with_costs(rows: list[dict], teacher: Path, workers: int) -> list[dict]:
    """Each row's teacher cost per worker (peak RSS / PSS above the cache baseline's), the
    issue's bound for a partition and the preflight estimate's error against the peak."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.core.teacher_plan import footprint

    fp = footprint(AutoConfig.from_pretrained(teacher), AutoModelForCausalLM)
    base = next((r for r in rows if r["partition"] == "cache" and r["exit"] == 0), None)
    for row in rows:
        if row["exit"] != 0 or row["partition"] == "cache" or base is None:
            continue
        size = 4 if row["dtype"] == "fp32" else 2
        row["teacher_cost_rss_gib"] = round(max(row["peak_rss_gib"]) - max(base["peak_rss_gib"]), 3)
        row["teacher_cost_pss_gib"] = round(max(row["peak_pss_gib"]) - max(base["peak_pss_gib"]), 3)
        row["bound_gib"] = round(
            (1.25 * fp.parameters * size / workers + fp.largest_layer * size) / 2**30, 3
        )
        estimate = (row.get("preflight") or {}).get("estimated_peak_bytes")
        if estimate:
            row["estimate_gib"] = round(estimate / 2**30, 3)
            row["estimate_error"] = round(estimate / 2**30 / max(row["peak_rss_gib"]) - 1, 3)
    return rows


def four_cpu_node():
    """One local node that offers 4 CPUs (on this 2-core machine) so 4 workers can start;
    (cluster, its environment)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.ray_cluster import LocalCluster

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    cluster = LocalCluster(head_cpus=4, env=auth)  # `ray start` serves token auth only
    return cluster, {**auth, "RAY_ADDRESS": cluster.gcs_address}


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


def table(teacher: Path, workers: int, dtypes: list[str], tmp: Path, env=None, extra=()) -> list:
    """The baseline, then replicate and zero3 interleaved, per dtype; with costs."""
    extra = [f"scaling.num_workers={workers}", *extra]
    rows = [run(teacher, "cache", "fp32", tmp / f"n{workers}-cache", extra, env)]
    print(json.dumps(rows[-1]), flush=True)
    for dtype in dtypes:
        for partition in ("replicate", "zero3"):
            rows.append(
                run(teacher, partition, dtype, tmp / f"n{workers}-{partition}-{dtype}", extra, env)
            )
            print(json.dumps(rows[-1]), flush=True)
    return with_costs(rows, teacher, workers)


def demo_3b(tmp: Path) -> dict:
    """The teacher that cannot fit replicated: zero3 over 2 workers must finish, replicate
    must be refused by preflight."""
    teacher = build_3b_teacher()
    out = {"teacher": str(teacher.name)}
    # Grouped-query attention (24 heads over 8 key/value heads): the student keeps the
    # 128-wide heads and 3 query heads per key/value head.
    student = ["student.hidden=768", "student.heads=6", "student.kv_heads=2"]
    refused = run(teacher, "replicate", "fp32", tmp / "3b-replicate", student, steps=3)
    out["replicate"] = {k: refused.get(k) for k in ("exit", "wall_s", "error")}
    print(json.dumps(out["replicate"]), flush=True)
    out["zero3"] = run(teacher, "zero3", "fp32", tmp / "3b-zero3", student, steps=3)
    print(json.dumps(out["zero3"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--only", help="one table: WORKERS:DTYPE, e.g. 2:bf16")
    parser.add_argument("--demo-3b", action="store_true", help="only the 3B demonstration")
    parser.add_argument("--two-node", action="store_true", help="add the 2-node zero3 bf16 row")
    parser.add_argument("--out", default="bench/results/teacher_memory.json")
    args = parser.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="distill-teacher-memory-") as tmp:
        tmp = Path(tmp)
        if args.demo_3b:
            result["demo_3b"] = demo_3b(tmp)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return
        teacher = build_teacher(args.layers, args.hidden, args.heads, args.vocab)
        result["teacher"] = {
            "layers": args.layers,
            "hidden": args.hidden,
            "heads": args.heads,
            "vocab": args.vocab,
        }
        # bf16 matmuls run ~170x slower than fp32 on a CPU without AVX512-BF16 (this
        # machine: 4.0 s vs 24 ms for 64x1536 @ 1536x6144), so the default tables are fp32.
        plan = {"2": ["fp32"], "4": ["fp32"]}
        if args.only:
            workers, dtype = args.only.split(":")
            plan = {workers: [dtype]}
        tables = {}
        for workers, dtypes in plan.items():
            if workers == "2":
                tables[f"{workers} workers"] = table(teacher, 2, dtypes, tmp / workers)
            else:  # more workers than cores: a local node that offers them CPUs
                cluster, env = four_cpu_node()
                with cluster:  # preflight reads each worker's memory from the node
                    tables[f"{workers} workers"] = table(
                        teacher, int(workers), dtypes, tmp / workers, env
                    )
        result["tables"] = tables
        if args.two_node:
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
                result["two_node"] = {**row, "cluster": "2 local nodes"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
