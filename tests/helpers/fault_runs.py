"""Real `distill run` processes to break: start one (its own local Ray, its own process
group), wait for what it wrote, and audit the run folder afterwards. Shared by the slow
fencing test (tests/integration/test_fencing_e2e.py) and the fault bench (bench/faults.py).

`Proxy` is a TCP proxy in front of an S3 endpoint (moto on loopback) that can drop every
connection for a while (an outage) or flip one byte in the body of the next upload whose
request names a given file (damage in transit).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from distill.cluster.checkpoints import COMPLETE, complete_checkpoints
from distill.cluster.storage import Storage


def small_job(steps: int, checkpoint_every: int) -> list[str]:
    """`--set` values of a small job that checkpoints often: packaged teacher, 1-layer
    student, 2 workers, a report every step (also bench/fault_injection.py's job)."""
    return [
        "student.layers=1",
        f"training.steps={steps}",
        "training.batch_size=8",
        "training.log_every=1",
        f"training.eval_every={steps}",
        f"training.checkpoint_every={checkpoint_every}",
        "training.warmup_steps=1",
        "data.max_length=32",
        "data.max_train_samples=400",
        "data.max_eval_samples=16",
        "evaluation.throughput_texts=16",
        "evaluation.throughput_rounds=1",
    ]


STEPS, CHECKPOINT_EVERY = 40, 5
JOB = small_job(STEPS, CHECKPOINT_EVERY)


def cli_env(**extra: str) -> dict:
    """This process's environment for a `distill` child: its own local Ray, hubs offline."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)
    return env


_RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+(, ip=[\d.]+)?\)(\x1b\[0m)? ")


class Run:
    """One `distill run --output URI` process (stdout and stderr to files in `logs`)."""

    def __init__(self, uri: str, settings: list[str], logs: Path, name: str) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.err_path, self.out_path = logs / f"{name}.err", logs / f"{name}.out"
        self.started = time.time()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distill.jobs.cli", "run", "--output", uri]
                + ["--set", *settings],
                stdout=out,
                stderr=err,
                env=cli_env(),
                start_new_session=True,  # its own process group: its local Ray goes with it
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        """Every `distill: ...` line, the driver's own and those Ray forwarded from its
        actors (`(TrainController pid=N) distill: ...`, colour codes dropped)."""
        lines = (_RAY_PREFIX.sub("", line) for line in self.stderr().splitlines())
        return [line for line in lines if line.startswith("distill: ")]

    def signal(self, sig: int, *, group: bool = False) -> None:
        (os.killpg if group else os.kill)(self.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise

    def kill_group(self) -> None:
        """SIGKILL the whole process group (the driver and the Ray it started)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


def wait_for(condition: Callable[[], bool], timeout: float, *alive: Run) -> None:
    """Poll `condition` until it holds; fail early when a run in `alive` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for run in alive:
            if run.proc.poll() is not None:
                raise AssertionError(f"run exited ({run.proc.returncode}): {run.stderr()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s")
        time.sleep(0.2)


def reported_steps(storage: Storage) -> list[int]:
    """The steps the run's workers reported, in order (train/reports.jsonl)."""
    try:
        text = storage.read_text("train/reports.jsonl")
    except FileNotFoundError:
        return []
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e["step"] for e in events if e["event"] == "report"]


def checkpoint_steps(storage: Storage) -> list[int]:
    """Steps of the run's complete checkpoints, newest first."""
    return [c["step"] for c in complete_checkpoints(storage)]


CHECKPOINT_DIR = re.compile(r"checkpoint_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d+")


def checkpoint_time(name: str) -> float:
    """When Ray named a checkpoint folder (`checkpoint_<local time>`), as Unix seconds."""
    stamp = name.removeprefix("checkpoint_")
    return dt.datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()


def stale_checkpoints(storage: Storage, since: float, generation: int) -> list[str]:
    """Checkpoint folders begun at or after `since` (a takeover) that the writer holding
    lease `generation` did not complete: anything a fenced-out writer left there."""
    stale = []
    for name in storage.list("train"):
        if not CHECKPOINT_DIR.fullmatch(name) or checkpoint_time(name) < since:
            continue
        try:
            manifest = json.loads(storage.read_text(f"train/{name}/{COMPLETE}"))
        except FileNotFoundError:
            stale.append(f"{name} (no {COMPLETE})")
            continue
        if manifest.get("generation") != generation:
            stale.append(f"{name} (generation {manifest.get('generation')})")
    return stale


class Proxy:
    """A TCP proxy on 127.0.0.1 (`url`) in front of `upstream` (http://host:port).

    `outage()`: refuse and drop every connection until `restore()`; `damage_next(name)`:
    flip one byte, 4 KiB into the body, of the next request whose request line contains
    `name` (then pass everything through again)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.down = threading.Event()
        self.damage: str | None = None
        self.damaged: list[str] = []
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def outage(self) -> None:
        self.down.set()
        with self.lock:
            for conn in self.connections:
                with _quiet():
                    conn.shutdown(socket.SHUT_RDWR)
            self.connections.clear()

    def restore(self) -> None:
        self.down.clear()

    def damage_next(self, name: str) -> None:
        self.damage = name

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        pending = bytearray()  # client side: bytes after a matching request line's headers
        flip_at = None
        with _quiet():
            while data := src.recv(1 << 16):
                if upload and (self.damage is not None or flip_at is not None):
                    data, flip_at = self._maybe_flip(pending, bytearray(data), flip_at)
                dst.sendall(data)
        for sock in (src, dst):
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)

    def _maybe_flip(self, seen: bytearray, data: bytearray, flip_at: int | None):
        """Track the upload stream; once the request naming `damage` (one with a body of
        8 KiB or more, so not a multipart upload's start) has sent 4 KiB of its body, flip
        one byte of it."""
        if flip_at is None:
            seen += data
            while True:
                name = self.damage
                line_at = seen.find(name.encode()) if name else -1
                body_at = seen.find(b"\r\n\r\n", line_at) if line_at >= 0 else -1
                if body_at < 0:
                    if line_at < 0:  # keep enough to find a request line split across reads
                        del seen[: max(0, len(seen) - 16384)]
                    return data, None
                if _body_length(bytes(seen[line_at:body_at])) >= 8192:
                    break
                del seen[: body_at + 4]  # a request without a big body: look further
            flip_at = len(data) - (len(seen) - (body_at + 4)) + 4096  # offset in `data`
            self.damage = None
            seen.clear()
        if flip_at < len(data):
            data[flip_at] ^= 0xFF
            self.damaged.append(time.strftime("%H:%M:%S"))
            return data, None
        return data, flip_at - len(data)


def _body_length(head: bytes) -> int:
    """The decoded body length a request's headers announce (0 when none)."""
    length = 0
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() in (b"content-length", b"x-amz-decoded-content-length"):
            length = max(length, int(value.strip() or 0))
    return length


class _quiet:
    """Ignore the socket errors of a connection torn down on purpose."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)
