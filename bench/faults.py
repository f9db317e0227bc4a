"""Fault injection, one row per fault, on real `distill run` processes (each with its own
local Ray and 2 workers), local disk or S3 (a moto server on loopback behind a TCP proxy):

    python bench/faults.py [--only worker,driver,...] [--out bench/results/faults.json]

- worker: SIGKILL one Ray Train worker after the first checkpoint (`scaling.max_failures=1`);
- driver: SIGKILL the driver's whole process group (driver + its local Ray) after the first
  checkpoint, then run the same command again;
- holder (S3): the same on S3, where the lease cannot be judged by its pid: the next
  command is refused in one line until the lease expires (`output.lease_ttl_s`), then
  takes over and resumes;
- s3: the S3 endpoint drops every connection for `--outage-s` seconds mid-run;
- paused: SIGSTOP the driver past its lease while its workers train on, start a second run
  into the folder (it takes the lease over), then SIGCONT the first;
- transit (S3): one byte of the next checkpoint's model shard flipped on its way to S3.

Per row: what happened (exit codes, every `distill:` line), steps lost (steps reported
again after the fault: the work redone), and the checkpoints a stale writer left in the
folder after a takeover (target: none). Targets: 0 files by a stale writer, lost steps <=
`training.checkpoint_every`, every failure one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.fault_runs import (  # noqa: E402
    CHECKPOINT_DIR,
    CHECKPOINT_EVERY,
    JOB,
    STEPS,
    Proxy,
    Run,
    checkpoint_steps,
    reported_steps,
    stale_checkpoints,
    wait_for,
)

from distill.cluster.checkpoints import COMPLETE  # noqa: E402
from distill.cluster.report_log import retries  # noqa: E402
from distill.cluster.storage import Storage, open_storage  # noqa: E402

TTL_S = 8.0  # the paused writer's lease
HOLDER_TTL_S = 45.0  # longer than a command's start-up, so the refusal shows
RUN_TIMEOUT_S = 900


def _events(storage: Storage) -> list[dict]:
    try:
        text = storage.read_text("train/reports.jsonl")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _redone(storage: Storage) -> int:
    """Steps reported again after a failure within one invocation (Ray's retry)."""
    return sum(r["redone"] or 0 for r in retries(_events(storage)))


def _row(fault: str, runs: dict[str, Run], storage: Storage, started: float, **extra) -> dict:
    steps = reported_steps(storage)
    return {
        "fault": fault,
        "exit_codes": {name: run.proc.returncode for name, run in runs.items()},
        "lines": {name: run.error_lines() for name, run in runs.items()},
        "finished": bool(steps) and steps[-1] == STEPS and storage.exists("report.json"),
        "checkpoint_every": CHECKPOINT_EVERY,
        "wall_s": round(time.time() - started, 1),
        **extra,
    }


def _after_first_checkpoint(run: Run, storage: Storage, extra_steps: int = 2) -> int:
    """Wait for the first complete checkpoint and `extra_steps` more reports; the last step."""
    wait_for(lambda: len(checkpoint_steps(storage)) >= 1, RUN_TIMEOUT_S, run)
    first = checkpoint_steps(storage)[0]
    wait_for(lambda: _last_step(storage) >= first + extra_steps, RUN_TIMEOUT_S, run)
    return _last_step(storage)


def _last_step(storage: Storage) -> int:
    steps = reported_steps(storage)  # written just after a checkpoint's manifest
    return steps[-1] if steps else 0


def _train_worker_pids(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if cmd.startswith("ray::RayTrainWorker") and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return sorted(pids)


def worker_kill(base: Path, settings: list[str], **_) -> dict:
    uri, started = str(base / "worker"), time.time()
    storage = open_storage(uri)
    run = Run(uri, [*settings, "scaling.max_failures=1"], base / "logs", "worker")
    try:
        killed_after = _after_first_checkpoint(run, storage)
        pids = _train_worker_pids(run.pid)
        os.kill(pids[-1], signal.SIGKILL)
        run.wait(RUN_TIMEOUT_S)
    finally:
        run.kill_group()
    return _row(
        "worker",
        {"run": run},
        storage,
        started,
        killed_after_step=killed_after,
        lost_steps=_redone(storage),
        stale_checkpoints=[],
    )


def driver_kill(base: Path, settings: list[str], **_) -> dict:
    uri, started = str(base / "driver"), time.time()
    storage = open_storage(uri)
    first = Run(uri, settings, base / "logs", "driver-1")
    try:
        killed_after = _after_first_checkpoint(first, storage)
        first.kill_group()
        resumed_from = max(checkpoint_steps(storage))
        again = Run(uri, settings, base / "logs", "driver-2")
        again.wait(RUN_TIMEOUT_S)
    finally:
        first.kill_group()
    return _row(
        "driver",
        {"killed": first, "again": again},
        storage,
        started,
        killed_after_step=killed_after,
        resumed_from_step=resumed_from,
        lost_steps=killed_after - resumed_from,
        stale_checkpoints=[],
    )


def holder_kill(base: Path, settings: list[str], s3: list[str], bucket_uri: str, **_) -> dict:
    uri, started = f"{bucket_uri}/holder", time.time()
    storage = open_storage(uri, _s3_spec(s3))
    settings = [*settings, *s3, f"output.lease_ttl_s={HOLDER_TTL_S}"]
    first = Run(uri, settings, base / "logs", "holder-1")
    attempts: dict[str, Run] = {"killed": first}
    try:
        killed_after = _after_first_checkpoint(first, storage)
        first.kill_group()
        killed_at, resumed_from = time.time(), max(checkpoint_steps(storage))
        while True:  # what a user (or a job retry) does: run it again until it starts
            attempt = Run(uri, settings, base / "logs", f"holder-{len(attempts) + 1}")
            attempts[f"attempt-{len(attempts)}"] = attempt
            wait_for(
                lambda a=attempt: a.proc.poll() is not None or "took over" in a.stderr(),
                RUN_TIMEOUT_S,
            )
            if attempt.proc.poll() is None:
                took_over_s = round(time.time() - killed_at, 1)
                attempt.wait(RUN_TIMEOUT_S)
                break
            time.sleep(5)
    finally:
        first.kill_group()
    return _row(
        "holder",
        attempts,
        storage,
        started,
        killed_after_step=killed_after,
        resumed_from_step=resumed_from,
        lost_steps=killed_after - resumed_from,
        lease_ttl_s=HOLDER_TTL_S,
        refused=sum(a.proc.returncode == 2 for a in attempts.values()),
        took_over_after_s=took_over_s,
        stale_checkpoints=[],
    )


def s3_outage(
    base: Path, settings: list[str], s3: list[str], bucket_uri: str, proxy: Proxy, outage_s, **_
) -> dict:
    uri, started = f"{bucket_uri}/outage", time.time()
    storage = open_storage(uri, _s3_spec(s3))
    run = Run(uri, [*settings, *s3, "scaling.max_failures=2"], base / "logs", "outage")
    try:
        at_step = _after_first_checkpoint(run, storage)
        proxy.outage()
        time.sleep(outage_s)
        proxy.restore()
        run.wait(RUN_TIMEOUT_S)
    finally:
        proxy.restore()
        run.kill_group()
    return _row(
        "s3",
        {"run": run},
        storage,
        started,
        outage_s=outage_s,
        outage_after_step=at_step,
        lost_steps=_redone(storage),
        stale_checkpoints=[],
    )


def paused_writer(base: Path, settings: list[str], **_) -> dict:
    uri, started = str(base / "paused"), time.time()
    storage = open_storage(uri)
    settings = [*settings, f"output.lease_ttl_s={TTL_S}"]
    first = Run(uri, settings, base / "logs", "paused-1")
    second = None
    try:
        paused_after = _after_first_checkpoint(first, storage, extra_steps=0)
        first.signal(signal.SIGSTOP)
        time.sleep(TTL_S + 2)
        second = Run(uri, settings, base / "logs", "paused-2")
        wait_for(lambda: "took over the lease" in second.stderr(), RUN_TIMEOUT_S, second)
        held, _ = storage.read_lease()
        generation, taken_at = held.generation, held.started  # the takeover (this host's clock)
        resumed_from = max(checkpoint_steps(storage))
        wait_for(lambda: len(reported_steps(storage)) > 0, RUN_TIMEOUT_S, second)
        first.signal(signal.SIGCONT)
        first.wait(300)
        stopped_after_s = round(time.time() - taken_at, 1)
        second.wait(RUN_TIMEOUT_S)
    finally:
        first.kill_group()
        if second is not None:
            second.kill_group()
    # What the paused writer's workers trained between the pause and being fenced out is
    # lost by design; the steps lost to the user are those behind the resumed checkpoint.
    return _row(
        "paused",
        {"paused": first, "took_over": second},
        storage,
        started,
        paused_after_step=paused_after,
        resumed_from_step=resumed_from,
        lost_steps=max(0, paused_after - resumed_from),
        stopped_after_takeover_s=stopped_after_s,
        stale_checkpoints=stale_checkpoints(storage, taken_at, generation),
    )


def transit_damage(
    base: Path, settings: list[str], s3: list[str], bucket_uri: str, proxy: Proxy, **_
) -> dict:
    uri, started = f"{bucket_uri}/transit", time.time()
    storage = open_storage(uri, _s3_spec(s3))
    run = Run(uri, [*settings, *s3], base / "logs", "transit")
    try:
        wait_for(lambda: len(checkpoint_steps(storage)) >= 1, RUN_TIMEOUT_S, run)
        proxy.damage_next("mp_rank_00_model_states.pt")
        run.wait(RUN_TIMEOUT_S)
    finally:
        run.kill_group()
    unmarked = [
        n
        for n in storage.list("train")
        if CHECKPOINT_DIR.fullmatch(n) and not storage.exists(f"train/{n}/{COMPLETE}")
    ]
    return _row(
        "transit",
        {"run": run},
        storage,
        started,
        bytes_flipped=len(proxy.damaged),
        unmarked_checkpoints=unmarked,
        lost_steps=_redone(storage),
        stale_checkpoints=[],
    )


def _s3_spec(s3: list[str]):
    from distill.core.spec import S3Spec

    values = dict(s.removeprefix("output.s3.").split("=", 1) for s in s3)
    return S3Spec(**values)


FAULTS = {
    "worker": worker_kill,
    "driver": driver_kill,
    "holder": holder_kill,
    "s3": s3_outage,
    "paused": paused_writer,
    "transit": transit_damage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FAULTS))
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from helpers.s3_fixtures import s3_client  # sets fake AWS keys for the children
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = Proxy(f"http://{host}:{port}")
    bucket = f"distill-faults-{uuid.uuid4().hex[:8]}"
    s3_client(f"http://{host}:{port}").create_bucket(Bucket=bucket)
    s3 = [f"output.s3.endpoint_url={proxy.url}", "output.s3.addressing_style=path"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-faults-") as tmp:
        for name in args.only.split(","):
            row = FAULTS[name](
                Path(tmp),
                list(JOB),
                s3=s3,
                bucket_uri=f"s3://{bucket}/runs",
                proxy=proxy,
                outage_s=args.outage_s,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    server.stop()
    result = {"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
