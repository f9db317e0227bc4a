"""Cluster operations on real `ray start` clusters on this machine
(tests/helpers/ray_cluster.py): `distill submit/status/logs/stop/jobs` through the Ray Jobs
API, Ray token auth, a 2-node run whose Train workers land on two nodes, and the loss of a
node mid-run.

CLI calls that talk to a cluster are subprocesses with a clean environment: their own HOME
(no `~/.ray/auth_token` of this machine), no RAY_ADDRESS, the token only where a case gives
it. Checks that never reach a cluster run the CLI in-process (`main([...])`).
The default run keeps the cheap checks (bad input, token refusal); jobs that train are
`slow` (`python -m pytest -m slow tests/integration/test_cluster_ops.py`: 3 jobs, about 10
minutes here).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from helpers.ray_cluster import LocalCluster

from distill.cluster.report_log import REPORTS_FILE, read_reports

pytestmark = pytest.mark.ray

ERROR_PREFIX = "distill: error: "
VENV_BIN = str(Path(sys.executable).parent)
TINY = [
    "student.layers=1",
    "training.steps=6",
    "training.batch_size=8",
    "training.log_every=1",
    "training.eval_every=6",
    "training.checkpoint_every=2",
    "training.warmup_steps=1",
    "data.max_length=32",
    "data.max_eval_samples=16",
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
]


def distill(
    *args: str,
    cwd: Path,
    token: str | None = None,
    address: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    home = cwd / ".home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH", "RAY_ADDRESS")) and k != "HOME"
    }
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if token:
        env["RAY_AUTH_TOKEN"] = token
    if address:
        env["RAY_ADDRESS"] = address
    return subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), done.stderr[-3000:]
    return lines[0]


def cluster_env(token: str) -> dict[str, str]:
    """`ray start` environment: token auth on, and this venv's python for job drivers."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


def write_texts(folder: Path, n: int = 300) -> Path:
    """A small local text file, named relatively in the config: submit must bundle it."""
    words = "the cat sat on a mat while dogs ran far away under bright light".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(6 + i % 5)) for i in range(n)]
    path = folder / "texts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- bad input never reaches a cluster ------------------------------------------------------


@pytest.fixture(scope="module")
def listener():
    """An address that records whether anything connected to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", hits
    stop.set()
    thread.join()
    sock.close()


SUBMIT_ERRORS = {
    "unknown-field": (["--set", "foo=1", "--output", "/tmp/x"], "foo: unknown field"),
    "relative-output": (["--set", "student.layers=2"], "output.dir: 'runs' is relative"),
    "secret-env": (
        ["--output", "/tmp/x", "--set", "student.layers=2", "--env", "AWS_SECRET_ACCESS_KEY=abc"],
        "--env AWS_SECRET_ACCESS_KEY: looks like a secret",
    ),
    "missing-data": (
        ["--output", "/tmp/x", "--set", "data.train.path=nope.csv"],
        "nope.csv",
    ),
}


def in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`distill ARGS` in this process (the imports are paid once): exit code, stderr."""
    from distill.jobs.cli import main

    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", SUBMIT_ERRORS)
def test_bad_submission_exits_2_without_contacting_the_cluster(
    name, listener, tmp_path, monkeypatch, capsys
):
    address, hits = listener
    args, message = SUBMIT_ERRORS[name]
    monkeypatch.chdir(tmp_path)
    before = len(hits)
    code, err = in_process(monkeypatch, capsys, "submit", *args, "--address", address)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(ERROR_PREFIX), err
    assert message in err, err
    assert len(hits) == before, "the cluster was contacted"


def test_no_address_and_unreachable_address_are_one_line_errors(tmp_path):
    line = one_line_error(distill("jobs", cwd=tmp_path))
    assert "--address" in line and "RAY_ADDRESS" in line
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line_error(
        distill("status", "raysubmit_x", "--address", f"127.0.0.1:{port}", cwd=tmp_path)
    )
    assert f"http://127.0.0.1:{port}" in line and "cannot reach" in line


# -- what a submission sends ------------------------------------------------------------------


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Replace the Jobs API call: record what would be sent (the staged working dir and
    py_modules are copied before distill deletes them)."""
    import shutil

    from distill.jobs import cluster_client

    sent: dict = {}

    def fake_send_job(address, entrypoint, renv, metadata, job_id):
        copy = tmp_path / "sent_working_dir"
        shutil.copytree(renv["working_dir"], copy)
        modules = []
        for i, module in enumerate(renv.get("py_modules", [])):
            modules.append(tmp_path / "sent_py_modules" / str(i) / Path(module).name)
            shutil.copytree(module, modules[-1])
        sent.update(
            address=address,
            entrypoint=entrypoint,
            renv=renv,
            metadata=metadata,
            working_dir=copy,
            py_modules=modules,
        )
        return "raysubmit_test"

    monkeypatch.setattr(cluster_client, "send_job", fake_send_job)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-never-sent-anywhere")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return sent


def assert_self_contained_package(package: Path, cwd: Path) -> None:
    """The shipped `distill` imports on its own: a fresh interpreter with this venv's
    site-packages but not its `.pth` files (so not the editable install's finder), no
    PYTHONPATH and a cwd outside the repo imports every layer from the staged folder."""
    assert (package / "__init__.py").is_file()
    assert sorted(p.name for p in package.iterdir() if p.is_dir()) == ["cluster", "core", "jobs"]
    assert not list(package.rglob("__pycache__"))
    assert list((package / "core" / "architectures").glob("*/*.json"))  # package data
    site_dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    probe = (
        "import sys\n"
        f"sys.path[:0] = [{str(package.parent)!r}]\n"
        f"sys.path += {site_dirs!r}\n"
        "import distill.jobs.cli, distill.cluster.worker_env, distill.core.losses\n"
        "print('\\n'.join(m.__file__ for m in (distill, distill.jobs.cli,"
        " distill.cluster.worker_env, distill.core.losses)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = done.stdout.split()
    assert len(files) == 4 and all(f.startswith(str(package) + os.sep) for f in files), files


def test_submit_stages_the_config_and_its_relative_files(captured, tmp_path, monkeypatch, capsys):
    from distill.core.spec_loading import load_spec
    from distill.jobs.cli import main

    work = tmp_path / "work"
    work.mkdir()
    texts = write_texts(work)
    monkeypatch.chdir(work)
    code = main(
        [
            "submit",
            "--output",
            "/shared/runs/x",
            "--address",
            "http://head:8265",
            "--set",
            "data.train.path=texts.txt",
            "student.layers=2",
            "--env",
            "FOO=1",
            "--pip",
            "einops==0.8.0",
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == "raysubmit_test"
    assert captured["address"] == "http://head:8265"
    assert (
        captured["entrypoint"]
        == "python -m distill.jobs.cli run job/config.yaml --output /shared/runs/x"
    )
    renv = captured["renv"]
    assert renv["env_vars"]["DS_ACCELERATOR"] == "cpu" and renv["env_vars"]["FOO"] == "1"
    assert renv["env_vars"]["DISTILL_SUBMITTED_JOB"] == "1"
    assert renv["pip"] == ["einops==0.8.0"]
    assert [Path(p).name for p in renv["py_modules"]] == ["distill"]
    assert_self_contained_package(captured["py_modules"][0], cwd=tmp_path)
    assert captured["metadata"]["distill_output"] == "/shared/runs/x"
    sent = json.dumps({k: v for k, v in captured.items() if k not in ("working_dir", "py_modules")})
    assert "tok-never-sent-anywhere" not in sent

    # The staged config names the bundled copy, relative to the working dir, and validates
    # there as the cluster will see it.
    staged = captured["working_dir"]
    config = (staged / "job" / "config.yaml").read_text()
    assert "tok-never" not in config
    monkeypatch.chdir(staged)
    spec = load_spec("job/config.yaml")
    (source,) = spec.data.train
    assert source.path == "job/files/0_texts.txt"
    assert (staged / source.path).read_text() == texts.read_text()
    assert spec.student.layers == 2


def test_tune_submit_stages_the_merged_sweep(captured, tmp_path, monkeypatch, capsys):
    from distill.cluster.sweep_spec import load_sweep
    from distill.jobs.cli import main

    work = tmp_path / "work"
    work.mkdir()
    write_texts(work)
    (work / "sweep.yaml").write_text(
        "base:\n"
        "  data: {train: {path: texts.txt}, max_train_samples: 200}\n"
        "  training: {steps: 4, checkpoint_every: 2, eval_every: 2, log_every: 2}\n"
        "  output: {dir: /shared/sweeps, name: depth}\n"
        "space:\n"
        "  student.layers: {grid: [1, 2]}\n"
    )
    monkeypatch.chdir(work)
    code = main(
        [
            "tune",
            "sweep.yaml",
            "--submit",
            "--address",
            "http://head:8265",
            "--set",
            "base.training.steps=6",
            "--max-params",
            "20000000",
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == "raysubmit_test"
    assert captured["entrypoint"] == (
        "python -m distill.jobs.cli tune job/sweep.yaml --max-params 20000000"
    )
    assert captured["metadata"]["distill_output"] == "/shared/sweeps/depth"
    monkeypatch.chdir(captured["working_dir"])
    sweep = load_sweep("job/sweep.yaml")
    assert sweep.base["training"]["steps"] == 6  # the --set override travels merged in
    assert sweep.base["data"]["train"]["path"] == "job/files/0_texts.txt"
    assert Path(sweep.base["data"]["train"]["path"]).is_file()
    assert list(sweep.space) == ["student.layers"]


def test_bundled_paths_resolve_in_each_nodes_copy_of_the_working_dir(tmp_path, monkeypatch):
    """Every node unpacks the job's working dir at its own path, and Ray Train moves the
    workers' cwd: relative paths, and absolute ones resolved on the driver's node, are
    rebased onto this node's copy (found on PYTHONPATH by its marker)."""
    from distill.cluster.worker_env import in_job_working_dir
    from distill.core.spec_loading import load_spec

    node = tmp_path / "node2" / "_ray_pkg_abc"
    (node / "job" / "files").mkdir(parents=True)
    (node / "job" / ".distill-job").write_text("")
    write_texts(node / "job" / "files").rename(node / "job" / "files" / "0_texts.txt")
    (node / "job" / "files" / "1_sts.csv").write_text("x")
    spec = load_spec(
        None,
        [
            "data.train.path=job/files/0_texts.txt",
            "evaluation.sts_path=/head/_ray_pkg_abc/job/files/1_sts.csv",
        ],
    )
    monkeypatch.delenv("DISTILL_SUBMITTED_JOB", raising=False)
    assert in_job_working_dir(spec) == spec  # outside a submitted job: unchanged
    monkeypatch.setenv("DISTILL_SUBMITTED_JOB", "1")
    monkeypatch.setenv("PYTHONPATH", f"/elsewhere:{node}")
    here = in_job_working_dir(spec)
    assert here.data.train[0].path == str(node / "job" / "files" / "0_texts.txt")
    assert here.evaluation.sts_path == str(node / "job" / "files" / "1_sts.csv")
    assert here.teacher == spec.teacher  # a hub / packaged name is left alone


# -- token auth ------------------------------------------------------------------------------


def test_token_cluster_refuses_a_client_without_its_token(tmp_path):
    token = secrets.token_hex(16)
    with LocalCluster(head_cpus=1, env=cluster_env(token)) as cluster:
        url = cluster.dashboard_url
        missing = one_line_error(distill("jobs", "--address", url, cwd=tmp_path))
        assert "requires an auth token" in missing and "RAY_AUTH_TOKEN" in missing
        wrong = one_line_error(distill("jobs", "--address", url, cwd=tmp_path, token="nope"))
        assert "rejected the auth token" in wrong
        # RAY_ADDRESS is the address when --address is absent; the token also comes from a file.
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        home = tmp_path / ".home"
        home.mkdir(exist_ok=True)
        env_file = {
            **os.environ,
            "HOME": str(home),
            "RAY_ADDRESS": url,
            "RAY_AUTH_TOKEN_PATH": str(token_file),
        }
        env_file.pop("RAY_AUTH_TOKEN", None)
        env_file["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        ok = subprocess.run(
            [sys.executable, "-m", "distill.jobs.cli", "jobs"],
            cwd=tmp_path,
            env=env_file,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0 and ok.stdout.strip() == "no jobs", ok.stderr[-2000:]
        for done in (ok,):
            assert token not in done.stdout + done.stderr


# -- jobs that train (slow) ------------------------------------------------------------------


def wait_status(
    job: str, cwd: Path, token: str, url: str, want: set[str], timeout: float = 600
) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = distill("status", job, "--json", "--address", url, cwd=cwd, token=token)
        assert done.returncode == 0, done.stderr[-2000:]
        info = json.loads(done.stdout)
        if info["status"] in want:
            return info
        time.sleep(3)
    raise TimeoutError(f"{job} never reached {want}")


@pytest.mark.slow(
    reason=(
        "starts a `ray start` cluster with token auth and runs two submitted jobs through the "
        "Jobs API (one trained to the end, one stopped mid-run); the default suite checks "
        "submission without training"
    )
)
def test_submit_runs_the_quickstart_and_status_logs_stop_work(tmp_path):
    token = secrets.token_hex(16)
    write_texts(tmp_path)
    run_dir = tmp_path / "out" / "quickstart"
    with LocalCluster(head_cpus=2, env=cluster_env(token)) as cluster:
        url = cluster.dashboard_url
        sub = distill(
            "submit",
            "--smoke",
            "--output",
            str(run_dir),
            "--address",
            url,
            "--set",
            "data.train.path=texts.txt",
            *TINY,
            cwd=tmp_path,
            token=token,
        )
        assert sub.returncode == 0, sub.stderr[-3000:]
        job = sub.stdout.strip()
        assert job.startswith("raysubmit_") and token not in sub.stdout + sub.stderr

        info = wait_status(job, tmp_path, token, url, {"SUCCEEDED", "FAILED", "STOPPED"})
        logs = distill("logs", job, "--address", url, cwd=tmp_path, token=token).stdout
        assert info["status"] == "SUCCEEDED", logs[-3000:]
        assert info["output"] == str(run_dir)
        assert "[distill] step 6/6" in logs
        listing = distill("jobs", "--address", url, cwd=tmp_path, token=token).stdout
        assert job in listing and "SUCCEEDED" in listing

        report = json.loads((run_dir / "report.json").read_text())
        assert report["run"]["status"] == "completed" and report["training"]["steps"] == 6
        # The bundled relative file was the training data (rows of texts.txt, not docstrings).
        assert "texts.txt" in (run_dir / "config.yaml").read_text()
        for path in run_dir.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".txt"):
                assert token not in path.read_text(errors="ignore"), path
        status = distill("status", job, "--json", "--address", url, cwd=tmp_path, token=token)
        assert token not in status.stdout

        # A second job, stopped while it runs.
        long = distill(
            "submit",
            "--output",
            str(tmp_path / "out" / "long"),
            "--address",
            url,
            "--set",
            "student.layers=1",
            "training.steps=500",
            cwd=tmp_path,
            token=token,
        )
        job2 = long.stdout.strip()
        wait_status(job2, tmp_path, token, url, {"RUNNING"})
        stop = distill("stop", job2, "--wait", "--address", url, cwd=tmp_path, token=token)
        assert stop.returncode == 0 and stop.stdout.strip() == f"{job2}: STOPPED", stop.stdout
        assert wait_status(job2, tmp_path, token, url, {"STOPPED"})["status"] == "STOPPED"
        missing = one_line_error(
            distill("status", "raysubmit_nope", "--address", url, cwd=tmp_path, token=token)
        )
        assert "raysubmit_nope: no such job" in missing


def two_node_cluster(token: str, head_cpus: int = 2, worker_cpus: int = 2):
    cluster = LocalCluster(head_cpus=head_cpus, env=cluster_env(token))
    worker = cluster.add_node(cpus=worker_cpus)
    return cluster, worker


@pytest.mark.slow(
    reason=(
        "starts a 2-node `ray start` cluster and trains a submitted 2-worker job spread across "
        "it; the only test of workers on two nodes"
    )
)
def test_two_node_run_places_workers_on_two_nodes(tmp_path):
    token = secrets.token_hex(16)
    write_texts(tmp_path)
    run_dir = tmp_path / "out" / "spread"
    cluster, _ = two_node_cluster(token)
    with cluster:
        sub = distill(
            "submit",
            "--output",
            str(run_dir),
            "--address",
            cluster.dashboard_url,
            "--set",
            "data.train.path=texts.txt",
            "scaling.placement_strategy=SPREAD",
            *TINY,
            "--follow",
            cwd=tmp_path,
            token=token,
            timeout=600,
        )
        assert sub.returncode == 0, (sub.stdout + sub.stderr)[-3000:]
    events = read_reports(run_dir / "train" / REPORTS_FILE)
    nodes = {tuple(e["nodes"]) for e in events if e["event"] == "report"}
    assert len(nodes) == 1
    (rank_nodes,) = nodes
    assert len(rank_nodes) == 2 and len(set(rank_nodes)) == 2, rank_nodes
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["status"] == "completed" and report["training"]["steps"] == 6
    # The job's preflight read each node's Ray memory resource (2 workers of 1 CPU per node).
    decided = report["teacher"]["placement"]["preflight"]
    assert decided["worker_memory_bytes"] is not None and decided["worker_memory_bytes"] > 2**28
    assert decided["reason"].startswith("within half of a worker's"), decided


@pytest.mark.slow(
    reason=(
        "starts a 2-node `ray start` cluster, stops the worker node during a 16-step submitted "
        "job and waits for Ray to mark it dead and the retry to finish on the head; the only "
        "test of losing a node"
    )
)
def test_losing_the_worker_node_mid_run_retries_on_the_head(tmp_path):
    """Documented outcome (docs/operations.md): with max_failures >= 1 and room for the
    workers on the surviving node, Ray Train restarts the worker group there and the run
    resumes from its latest checkpoint; the failure event names the lost node."""
    token = secrets.token_hex(16)
    write_texts(tmp_path)
    run_dir = tmp_path / "out" / "nodeloss"
    cluster, worker = two_node_cluster(token)
    with cluster:
        sub = distill(
            "submit",
            "--output",
            str(run_dir),
            "--address",
            cluster.dashboard_url,
            "--set",
            "data.train.path=texts.txt",
            "scaling.placement_strategy=SPREAD",
            "scaling.max_failures=1",
            *TINY,
            "training.steps=16",
            "training.checkpoint_every=3",
            cwd=tmp_path,
            token=token,
        )
        assert sub.returncode == 0, sub.stderr[-3000:]
        job = sub.stdout.strip()
        reports = run_dir / "train" / REPORTS_FILE
        deadline = time.time() + 600
        while time.time() < deadline:
            events = read_reports(reports) if reports.is_file() else []
            if any(e["event"] == "report" and e["step"] >= 4 for e in events):
                break
            time.sleep(0.2)
        lost = next(e for e in events if e["event"] == "report")["nodes"]
        cluster.stop_node(worker)
        info = wait_status(
            job, tmp_path, token, cluster.dashboard_url, {"SUCCEEDED", "FAILED", "STOPPED"}
        )
        logs = distill(
            "logs", job, "--address", cluster.dashboard_url, cwd=tmp_path, token=token
        ).stdout
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    events = read_reports(run_dir / "train" / REPORTS_FILE)
    failures = [e for e in events if e["event"] == "failure"]
    assert len(failures) == 1
    after = [e for e in events[events.index(failures[0]) :] if e["event"] == "report"]
    assert len(set(lost)) == 2 and len(set(after[0]["nodes"])) == 1  # both ranks on the head
    (lost_node,) = set(lost) - set(after[0]["nodes"])
    assert lost_node in json.dumps(failures[0]), failures[0]  # the failure names the lost node
    assert after[-1]["step"] == 16 and after[0]["step"] - 1 in (3, 6, 9, 12, 15)
