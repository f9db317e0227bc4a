"""Integration (issue 17): one writer per run folder, and resume never stuck on a damaged
checkpoint.

A real 8-step run (checkpoints at steps 4 and 8) trains in a thread of this process while
`distill run` into the same folder is started as a second process: it must exit 2 with one
line naming the holder, without starting Ray. Once the first run has ended (its lease
released), a file of its newest checkpoint is truncated and the run is continued to step
12: it must say which file is damaged and resume from the step-4 checkpoint. The same
fallback on S3 (moto) is `slow`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers.storage_checks import lease_free
from test_ray_train import SMALL

from distill.cluster.checkpoints import complete_checkpoints
from distill.cluster.s3_storage import S3Options, S3Storage
from distill.cluster.storage import LocalStorage, Storage
from distill.cluster.storage_protocol import LEASE_FILE
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

DAMAGED = "engine/mp_rank_00_model_states.pt"  # ZeRO-2: the whole module's weights
KEPT_BYTES = 1234


def _history(run: Storage) -> list[dict]:
    return [json.loads(line) for line in run.read_text("metrics.jsonl").splitlines()]


def _truncate_newest_checkpoint(run: Storage) -> tuple[dict, dict, int]:
    """Cut the newest checkpoint's model shard to KEPT_BYTES; (newest, older, its size)."""
    newest, older = complete_checkpoints(run)[:2]
    data = run.get(f"{newest['path']}/{DAMAGED}")
    run.put(f"{newest['path']}/{DAMAGED}", data[:KEPT_BYTES])
    return newest, older, len(data)


def _check_fallback(run: Storage, first: list[dict], err: str, newest, older, size) -> None:
    """The re-run named the damaged file, resumed from the older checkpoint, finished."""
    notice = (
        f"distill: checkpoint {newest['path']} is damaged ({DAMAGED}: {KEPT_BYTES} bytes, "
        f"expected {size}); resuming from {older['path']} (step 4)"
    )
    assert notice in err.splitlines(), err[-3000:]
    history = _history(run)
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    assert history[:2] == first[:2]  # carried over in the step-4 checkpoint
    # Steps 6 and 8 were trained again by this run's workers (another placement group).
    assert history[2]["placement_group"] != first[2]["placement_group"]
    assert history[2]["loss"] < first[0]["loss"]  # from trained weights, not from scratch


@pytest.fixture(scope="module")
def contested_run(ray_session, tmp_path_factory):
    """An 8-step run in a thread; while it trains, `distill run` into its folder from a
    second process (with a Ray temp dir of its own that must never appear)."""
    root = tmp_path_factory.mktemp("contested")
    run_dir, ray_tmp = root / "run", root / "second.ray"
    outcome: dict = {}

    def first_writer() -> None:
        try:
            outcome["report"] = run_job(load_spec(None, SMALL), str(run_dir))
        except BaseException as exc:  # reported by the tests
            outcome["error"] = exc

    thread = threading.Thread(target=first_writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not (run_dir / LEASE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    second = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", "run", "--output", str(run_dir)]
        + ["--set", *SMALL],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcome.update(second=second, first_was_running=thread.is_alive(), ray_tmp=ray_tmp)
    thread.join(timeout=600)
    outcome["run"] = LocalStorage(run_dir)
    return outcome


def test_a_second_writer_is_refused_while_the_first_runs(contested_run):
    second = contested_run["second"]
    assert contested_run["first_was_running"]
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = second.stderr.strip().splitlines()
    run = contested_run["run"]
    assert line.startswith(
        f"distill: error: --output: {run.uri} is in use by another run "
        f"(host {socket.gethostname()}, pid {os.getpid()}, since "
    )
    assert line.endswith("pass --force to take over")
    assert not contested_run["ray_tmp"].exists()  # refused before Ray started

    # The first run was not disturbed, and released its lease when it ended.
    assert "error" not in contested_run, contested_run.get("error")
    assert contested_run["report"]["training"]["steps"] == 8
    assert lease_free(run)


def test_resume_passes_over_a_damaged_newest_checkpoint(contested_run, capfd):
    run = contested_run["run"]
    assert "error" not in contested_run, contested_run.get("error")
    first = _history(run)
    newest, older, size = _truncate_newest_checkpoint(run)
    capfd.readouterr()
    # A new writer is allowed now that the first one ended.
    report = run_job(load_spec(None, SMALL + ["training.steps=12"]), run.uri)
    _check_fallback(run, first, capfd.readouterr().err, newest, older, size)
    assert report["training"]["steps"] == 12
    assert lease_free(run)


@pytest.mark.slow(
    reason=(
        "a job and its continuation on S3 (moto) over a truncated checkpoint; the default suite "
        "does the same on local disk"
    )
)
def test_resume_passes_over_a_damaged_newest_checkpoint_in_s3(
    ray_session, moto_endpoint, bucket, capfd
):
    uri = f"s3://{bucket}/runs/damaged"
    s3 = [f"output.s3.endpoint_url={moto_endpoint}", "output.s3.addressing_style=path"]
    run_job(load_spec(None, SMALL + s3), uri)
    run = S3Storage(uri, S3Options(endpoint_url=moto_endpoint, addressing_style="path"))
    first = _history(run)
    newest, older, size = _truncate_newest_checkpoint(run)
    capfd.readouterr()
    run_job(load_spec(None, SMALL + s3 + ["training.steps=12"]), uri)
    _check_fallback(run, first, capfd.readouterr().err, newest, older, size)
    assert lease_free(run)
