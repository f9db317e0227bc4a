"""Teacher forward time, ZeRO-3-partitioned vs replicated, on the same machine in one run.

N processes (torch.distributed over gloo, no Ray: this isolates the forward) each run the
frozen teacher of `bench/teacher_memory.py` (a random 1.1B GPT-2-style decoder, written there
to `bench/.cache/`) on the same batch shape as that benchmark (2 x 32 tokens), a few steps,
and report the median per-step forward time of the steps after the first. Rows:

- `replicate`: every process holds the whole teacher (`teacher.placement: replicate`).
- `zero3`: `teacher.placement: zero3`, DeepSpeed's parameter fetch: every rank packs its
  partitions into one buffer, all-gathers, then unpacks each parameter with `torch.cat`
  into a fresh tensor: the whole teacher is allocated, written and freed every forward.
- `-allreduce` rows: DeepSpeed's `stage3_use_all_reduce_for_fetch_params`: every rank writes
  its partitions into one zeroed buffer per fetch, the gathered parameters are views of it,
  and all-reduces it (no unpacking copy). The buffer lives as long as any parameter of that
  fetch is still gathered, so it is not what workers use (see docs/benchmarks.md).
- `-thp` rows: the same with `THP_MEM_ALLOC_ENABLE=1`, PyTorch's CPU allocator asking for
  transparent huge pages for its large blocks (as `cluster/worker_env.py` sets for workers
  holding a zero3 teacher): a fresh 2 MiB page faults once where 512 small pages fault
  one by one, and the fetch path allocates the whole teacher every forward.

Also reported per rank: RSS once the teacher is loaded, and the peak RSS during the forwards
(the kernel's high-water mark, reset after the load): what the gathers add on top of the
partition. Also the bytes each rank gathers per step (the whole teacher) and the time to
copy them once through memory on this machine, the floor of any partitioned forward on CPU.

    python bench/zero3_forward.py --out bench/results/zero3_forward.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_TEACHER = ROOT / "bench" / ".cache" / "teacher-gpt2-36x1536-fp32"
ROWS = ("replicate", "zero3", "replicate-thp", "zero3-thp")
# `-allreduce` rows: DeepSpeed's `stage3_use_all_reduce_for_fetch_params` (not what workers
# use: see the module docstring).


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero3_config(row: str) -> dict:
    from distill.cluster.teacher_on_worker import teacher_deepspeed_config
    from distill.core.spec_loading import load_spec_dict

    spec = load_spec_dict({}, ["teacher.placement=zero3", "training.batch_size=2"])
    config = teacher_deepspeed_config(spec)
    if "-allreduce" in row:
        config["zero_optimization"]["stage3_use_all_reduce_for_fetch_params"] = True
    if "-sequential" in row:
        config["zero_optimization"]["stage3_allgather_sequential"] = True
    return config


def _worker(
    rank: int, world: int, port: int, row: str, teacher: str, steps: int, out, profile: bool
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    import torch

    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoConfig

    from distill.cluster.teacher_on_worker import load_partitioned
    from distill.core.family_registry import family_of

    deepspeed.init_distributed(dist_backend="gloo")
    family = family_of(AutoConfig.from_pretrained(teacher))
    if row.startswith("replicate"):
        model = family.load_model(teacher, dtype=torch.float32).eval().requires_grad_(False)
    else:
        config = _zero3_config(row)
        module = load_partitioned(family, teacher, config, torch.float32)
        module.eval().requires_grad_(False)
        model, *_ = deepspeed.initialize(model=module, config=config)
        model.eval()
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    # The forwards' own peak: reset the kernel's high-water mark once the teacher is loaded
    # (`clear_refs` 5), so VmHWM afterwards is the peak of the gathers, not of the load.
    loaded_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times, first = [], None
    profiler = None
    with torch.no_grad():
        for step in range(steps):
            if profile and rank == 0 and step == steps - 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            dist.barrier()
            start = time.perf_counter()
            logits = model(input_ids=ids).logits
            times.append(time.perf_counter() - start)
            first = logits[0, 0, :4].tolist() if first is None else first
    if profiler is not None:  # the last step: where a steady forward's time goes
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        print(f"--- {row}, rank 0, last step ---\n{text.getvalue()}", flush=True)
    memory = {
        "rank": rank,
        "rss_after_load_gib": loaded_kib / 2**20,
        "peak_rss_forwards_gib": _status_kib("VmHWM") / 2**20,
    }
    out.put({"row": row, "step_s": times, "logits": first, **memory} if rank == 0 else memory)
    dist.barrier()
    dist.destroy_process_group()


def _baseline(row: str) -> str:
    return row.replace("zero3", "replicate").replace("-allreduce", "").replace("-sequential", "")


def _copy_floor(nbytes: int) -> float:
    """Seconds to copy `nbytes` once (one fresh destination), the memory-bandwidth floor."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)
    start = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(DEFAULT_TEACHER))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--profile", action="store_true", help="cProfile rank 0's last step")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (Path(args.teacher) / "config.json").exists():
        sys.exit(
            f"--teacher: {args.teacher} has no config.json (run bench/teacher_memory.py first)"
        )
    import torch.multiprocessing as mp
    from transformers import AutoConfig

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")  # as cluster/worker_env.py sets
    ctx = mp.get_context("spawn")
    results = {}
    for row in args.rows.split(","):
        queue = ctx.Queue()
        port, work = _free_port(), (args.teacher, args.steps, queue, args.profile)
        procs = [
            ctx.Process(target=_worker, args=(r, args.workers, port, row, *work))
            for r in range(args.workers)
        ]
        os.environ.pop("THP_MEM_ALLOC_ENABLE", None)  # read by each child at its start
        if row.endswith("-thp"):
            os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        for p in procs:
            p.start()
        answers = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        got = next(a for a in answers if a["rank"] == 0)
        got["peak_rss_forwards_gib_per_rank"] = [
            round(a["peak_rss_forwards_gib"], 3) for a in sorted(answers, key=lambda a: a["rank"])
        ]
        got["rss_after_load_gib_per_rank"] = [
            round(a["rss_after_load_gib"], 3) for a in sorted(answers, key=lambda a: a["rank"])
        ]
        steady = got["step_s"][1:] or got["step_s"]
        got["median_s"] = statistics.median(steady)
        results[row] = got
        print(
            f"{row:>20}: {got['median_s']:.2f} s per forward (steps "
            f"{[round(t, 2) for t in got['step_s']]}); RSS after load "
            f"{max(got['rss_after_load_gib_per_rank']):.2f} GiB, peak during the forwards "
            f"{max(got['peak_rss_forwards_gib_per_rank']):.2f} GiB (worst rank)",
            flush=True,
        )
    config = AutoConfig.from_pretrained(args.teacher)
    nbytes = sum(f.stat().st_size for f in Path(args.teacher).glob("*.safetensors"))
    floor = _copy_floor(nbytes)
    summary = {
        "teacher": args.teacher,
        "layers": config.n_layer,
        "hidden": config.n_embd,
        "workers": args.workers,
        "batch": [2, 32],
        "gathered_bytes_per_step": nbytes,
        "one_copy_of_gathered_bytes_s": floor,
        "rows": results,
        "ratio_to_replicate": {
            row: results[row]["median_s"] / results[_baseline(row)]["median_s"]
            for row in results
            if row.startswith("zero3") and _baseline(row) in results
        },
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
