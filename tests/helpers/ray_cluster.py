"""A throwaway multi-node Ray cluster on this machine, started with the real `ray start`.

Each node gets its own `--temp-dir` and its own block of ports, so tests never touch another
Ray instance on the machine; `stop()` kills only the processes this cluster started (found
by their temp dir), never a bare `ray stop`.

    with LocalCluster(head_cpus=1, env={"RAY_AUTH_MODE": "token", ...}) as cluster:
        cluster.add_node(cpus=1)
        cluster.dashboard_url  # http://127.0.0.1:PORT for the Jobs API
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
_PORT_KEYS = (
    "--port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
_HEAD_ONLY = ("--port", "--ray-client-server-port", "--dashboard-port")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block(size: int = 200) -> int:
    """The first port of `size` consecutive free ones, picked at random in 20000-29999."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - size)
        if all(_port_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of ports")


class LocalCluster:
    def __init__(self, head_cpus: int = 1, env: dict[str, str] | None = None, head_resources=None):
        self.root = Path(tempfile.mkdtemp(prefix="dops-", dir="/tmp"))  # short: AF_UNIX paths
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[Path] = []
        self._next_port = _port_block()
        head = self._start(head=True, cpus=head_cpus, resources=head_resources)
        self.gcs_address = f"127.0.0.1:{head['--port']}"
        self.dashboard_url = f"http://127.0.0.1:{head['--dashboard-port']}"
        self._wait_dashboard()

    def _ports(self, head: bool) -> dict[str, int]:
        keys = [k for k in _PORT_KEYS if head or k not in _HEAD_ONLY]
        ports = {}
        for key in keys:
            ports[key] = self._next_port
            self._next_port += 1
        ports["--min-worker-port"] = self._next_port
        ports["--max-worker-port"] = self._next_port + 39
        self._next_port += 40
        return ports

    def _start(self, head: bool, cpus: int, resources=None, attempts: int = 3) -> dict[str, int]:
        """`ray start` one node. Ray gives a raylet 30 s to register, which a loaded
        machine can miss: then the node's processes are killed and it is started again."""
        ports = self._ports(head)
        for attempt in range(attempts):
            temp = self.root / f"n{len(self.nodes)}-{attempt}"
            temp.mkdir()
            cmd = [RAY, "start", f"--temp-dir={temp}", f"--num-cpus={cpus}", "--num-gpus=0"]
            cmd += ["--disable-usage-stats", "--object-store-memory=200000000"]
            cmd += [f"{k}={v}" for k, v in ports.items()]
            if resources:
                cmd.append(f"--resources={json.dumps(resources)}")
            if head:
                cmd += ["--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
                cmd += ["--include-dashboard=true"]
            else:
                cmd += [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1"]
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                self.nodes.append(temp)
                return ports
            self.stop_node(temp)
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"ray start failed {attempts} times: {done.stderr[-2000:]}")

    def _wait_dashboard(self, timeout: float = 90) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2)
                return
            except Exception as exc:  # 401 means the server is up and wants a token
                if getattr(exc, "code", None) in (401, 403):
                    return
                time.sleep(1)
        raise RuntimeError("dashboard did not come up")

    def add_node(self, cpus: int = 1, resources=None) -> Path:
        """Start a worker node; returns its temp dir (its id for `stop_node`)."""
        self._start(head=False, cpus=cpus, resources=resources)
        return self.nodes[-1]

    def pids(self, node: Path | None = None) -> list[int]:
        """Processes of this cluster (or of one node): those whose command line names its
        temp dir, plus their children (workers inherit the raylet's session)."""
        needle = str(node or self.root)
        procs = []  # from /proc: `ps` cuts command lines to the terminal's width
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs.append((int(entry.name), ppid, args))
        mine = {pid for pid, _, args in procs if needle in args}
        grew = True
        while grew:
            children = {pid for pid, ppid, _ in procs if ppid in mine} - mine
            grew = bool(children)
            mine |= children
        mine.discard(os.getpid())
        return sorted(mine)

    def stop_node(self, node: Path) -> None:
        """Kill one node's processes at once (a preempted machine)."""
        for pid in self.pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids and sig == signal.SIGTERM:
                time.sleep(3)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
