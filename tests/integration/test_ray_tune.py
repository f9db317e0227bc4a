"""Integration: `distill tune` runs real Ray Tune sweeps whose trials are Ray Train +
DeepSpeed jobs on the packaged teacher.

Every test here is `slow` (sweep specs and trial plumbing are unit-tested): a 2-trial sweep
whose storage is S3 (a moto server on loopback), interrupted with Ctrl-C once its first trial
has finished and resumed by running the same command again (the finished trial is not
redone, the teacher cache built by the first invocation is hit by the second, and the
report, Pareto plot and chosen student land in the bucket); Optuna multi-objective search
with the ASHA scheduler on local storage; and a grid run best first under ASHA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers.s3_fixtures import list_keys, s3_client
from helpers.storage_checks import lease_free
from test_cli import cli_env
from transformers import AutoModel

from distill.cluster.s3_storage import S3Options, S3Storage
from distill.cluster.storage import Lease
from distill.cluster.storage_protocol import LEASE_FILE

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "student": {"hidden": 192, "heads": 6, "init": "width_slice"},
    "data": {"max_train_samples": 128, "max_eval_samples": 16, "max_length": 32},
    "objective": {"weights": {"hidden_mse": 1.0, "pooled_cosine": 1.0}},
    "training": {
        "steps": 8,
        "batch_size": 8,
        "warmup_steps": 1,
        "log_every": 4,
        "eval_every": 4,
        "checkpoint_every": 4,
    },
    "scaling": {"num_workers": 2},
    "deepspeed": {"zero_stage": 2},
    "evaluation": {"throughput_texts": 16, "throughput_rounds": 1, "batch_size": 16},
}


def _sweep_file(folder: Path, base: dict, **sections) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base, **sections}))
    return path


def _tune(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distill.jobs.cli", "tune", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"distill tune exited early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(1)
    raise AssertionError("timed out waiting for the first trial")


@pytest.mark.slow(
    reason=(
        "about 117 s: a 2-trial `distill tune` on S3, interrupted with Ctrl-C after its first "
        "trial and resumed; the only test of a sweep's teacher cache shared across a resume "
        "(sweep specs and trial plumbing are unit-tested)"
    )
)
def test_s3_sweep_interrupted_and_resumed(tmp_path, moto_endpoint, bucket):
    base = {
        **BASE,
        "output": {"s3": {"endpoint_url": moto_endpoint, "addressing_style": "path"}},
    }
    sweep = _sweep_file(
        tmp_path,
        base,
        space={"student.layers": {"grid": [1, 2]}},
    )
    uri = f"s3://{bucket}/sweeps/depth"
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))
    env = cli_env(ray_tmp, tmp_path / "hf")
    storage = S3Storage(uri, S3Options(endpoint_url=moto_endpoint, addressing_style="path"))

    def finished_trials() -> list[str]:
        return [t for t in storage.list("trials") if storage.exists(f"trials/{t}/report.json")]

    first = _tune([str(sweep), "--output", uri], env)
    _wait_for(lambda: len(finished_trials()) >= 1, 420, first)
    done_first = finished_trials()
    # The sweep's driver holds one lease for the whole folder; its trials hold none.
    assert Lease.from_json(storage.get(LEASE_FILE)).pid == first.pid
    assert not any(storage.exists(f"trials/{t}/{LEASE_FILE}") for t in storage.list("trials"))
    stamp = {
        t: s3_client(moto_endpoint).head_object(
            Bucket=bucket, Key=f"sweeps/depth/trials/{t}/report.json"
        )["LastModified"]
        for t in done_first
    }
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 130, out[-3000:]
    assert lease_free(storage)  # released on Ctrl-C too
    interrupted = json.loads(storage.read_text("sweep_report.json"))
    assert interrupted["counts"]["completed"] == len(done_first) >= 1
    assert interrupted["counts"]["interrupted"] == 2 - len(done_first)

    second = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", "tune", str(sweep), "--output", uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the sweep" in second.stdout

    report = json.loads(storage.read_text("sweep_report.json"))
    # 2 CPUs, 2 one-CPU Train workers per trial: one trial at a time, never a deadlock.
    assert report["sweep"]["max_concurrent_trials"] == 1
    trials = report["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert {t["params"]["student.layers"] for t in trials} == {1, 2}
    # The trial finished before Ctrl-C was not run again: its report is the same object.
    for t in done_first:
        head = s3_client(moto_endpoint).head_object(
            Bucket=bucket, Key=f"sweeps/depth/trials/{t}/report.json"
        )
        assert head["LastModified"] == stamp[t]
    # The cache the first invocation built served the second (a hit, same key).
    cache = report["sweep"]["teacher_cache"]
    assert cache["used"] and cache["hit"]
    for t in trials:
        trial_report = json.loads(storage.read_text(f"trials/{t['trial_id']}/report.json"))
        assert trial_report["teacher_cache"]["key"] == cache["key"]
        m = t["metrics"]
        assert 0 < m["params"] < report["teacher"]["parameters"] and m["speedup"] > 0
        assert -1 <= m["quality"] <= 1
    by_layers = {t["params"]["student.layers"]: t["metrics"]["params"] for t in trials}
    assert by_layers[1] < by_layers[2]
    # Front, plot and the chosen student, all in the bucket.
    assert set(report["pareto"]["quality_vs_speedup"]) <= {t["trial_id"] for t in trials}
    assert report["pareto"]["quality_vs_speedup"]
    assert storage.get("pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = report["chosen"]
    assert chosen["rule"] == "knee" and chosen["student"] == f"{uri}/student"
    keys = list_keys(moto_endpoint, bucket, "sweeps/depth/")
    assert any(k.startswith("sweeps/depth/tune/") for k in keys)  # Tune's experiment state
    assert any(k.startswith("sweeps/depth/teacher_cache/") for k in keys)
    with tempfile.TemporaryDirectory() as local:
        storage.get_dir("student", local)
        model = AutoModel.from_pretrained(local)
        chosen_trial = next(t for t in trials if t["trial_id"] == chosen["trial_id"])
        assert model.config.num_hidden_layers == chosen_trial["params"]["student.layers"]
        assert model.config.hidden_size == 192
    # `distill report` on the sweep folder prints the table.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.jobs.cli",
            "report",
            uri,
            "--endpoint-url",
            moto_endpoint,
            "--addressing-style",
            "path",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"chosen: {chosen['trial_id']} (knee)" in shown.stdout
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow(
    reason=(
        "a 3-trial Optuna sweep under ASHA, each trial a Ray Train job; sweep specs and trial "
        "plumbing are unit-tested"
    )
)
def test_optuna_multi_objective_with_asha(tmp_path, ray_session):
    from distill.cluster.sweep_spec import SweepSpec
    from distill.jobs.tune import run_sweep

    sweep = SweepSpec(
        base={**BASE, "training": {**BASE["training"], "steps": 12}},
        space={
            "student.layers": {"choice": [1, 2, 3]},
            "training.learning_rate": {"loguniform": [1e-4, 1e-3]},
        },
        search={"algorithm": "optuna", "num_samples": 3, "objectives": ["quality", "speedup"]},
        scheduler={"kind": "asha", "metric": "eval_loss", "grace_period": 4, "reduction_factor": 2},
    )
    report = run_sweep(sweep, str(tmp_path / "sweep"), max_params=15_000_000)
    assert len(report["trials"]) == 3
    assert report["counts"]["error"] == 0 and report["counts"]["completed"] >= 1
    for t in report["trials"]:
        assert 1e-4 <= t["params"]["training.learning_rate"] <= 1e-3
        if t["status"] == "stopped":  # ASHA stopped it at a rung, short of the last step
            assert t["metrics"]["step"] < 12
    assert report["chosen"]["rule"] == "best quality with params <= 15,000,000"
    assert (tmp_path / "sweep" / "pareto.png").is_file()


@pytest.mark.slow(
    reason=(
        "a 2-trial sweep under ASHA, then the same sweep again to check that Tune restores its "
        "saved order; the ranking is unit-tested in tests/unit/jobs/test_sweep_order.py"
    )
)
def test_ordered_grid_runs_best_first_under_asha(tmp_path, ray_session, monkeypatch):
    """`search.order: init_quality`: Tune starts the grid's points in the driver's ranking,
    and the report lists each trial under the space's own keys."""
    from distill.cluster.sweep_spec import SweepSpec
    from distill.jobs.sweep_check import check_sweep
    from distill.jobs.sweep_order import init_quality_order
    from distill.jobs.tune import run_sweep

    base = {
        **BASE,
        "training": {**BASE["training"], "steps": 12},
        "evaluation": {**BASE["evaluation"], "sts_path": "builtin:sts-sample", "max_sts_pairs": 64},
    }
    sweep = SweepSpec(
        base=base,
        # A joint dimension too: a point's values may be whole sections.
        space={
            "student.layers": {"grid": [1, 3]},
            "student": {"grid": [{"hidden": 192, "heads": 6}]},
        },
        search={"order": "init_quality"},
        scheduler={"kind": "asha", "grace_period": 4, "reduction_factor": 2},
    )
    ranked = init_quality_order([(p, s.spec) for p, s in check_sweep(sweep).combinations])
    report = run_sweep(sweep, str(tmp_path / "sweep"))
    # Trial ids number the trials in the order Tune created them.
    assert [t["params"] for t in report["trials"]] == [p for p, _ in ranked]
    assert report["counts"]["error"] == 0
    first = report["trials"][0]
    assert first["status"] == "completed" and first["metrics"]["step"] == 12

    # Run again on the same folder: Tune restores the saved, already ordered space, so the
    # driver does not rank the grid a second time.
    import distill.jobs.sweep_order as sweep_order

    def ranked_again(_combinations):
        raise AssertionError("a resumed sweep ranked its grid again")

    monkeypatch.setattr(sweep_order, "init_quality_order", ranked_again)
    resumed = run_sweep(sweep, str(tmp_path / "sweep"))
    assert [t["params"] for t in resumed["trials"]] == [p for p, _ in ranked]
    assert [t["status"] for t in resumed["trials"]] == [t["status"] for t in report["trials"]]
