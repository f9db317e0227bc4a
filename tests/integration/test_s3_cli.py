"""`distill` with bad S3 storage: exit code 2 and one stderr line naming the field, before
Ray takes anything, and within seconds for an endpoint that does not answer. Real CLI
subprocesses (like tests/test_cli.py, whose checks are reused) against moto servers on
loopback: an open one, and one enforcing IAM for wrong keys and missing permissions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, free_port
from test_cli import (
    Case,
    Outcome,
    check_no_ray,
    check_one_line,
    check_rejected,
    cli_env,
    ray_tmp_dir,
)

SMALL_RUN = ("student.layers=2", "data.max_train_samples=200")


def _run(endpoint: str | None, output: str, *extra: str) -> tuple[str, ...]:
    sets = [*SMALL_RUN, *extra]
    if endpoint:
        sets += [f"output.s3.endpoint_url={endpoint}", "output.s3.addressing_style=path"]
    return ("run", "--output", output, "--set", *sets)


def _cases(moto_endpoint: str, locked) -> dict[str, tuple[Case, dict[str, str]]]:
    locked_endpoint, locked_bucket, (reader_id, reader_secret) = locked
    unreachable = f"http://127.0.0.1:{free_port()}"
    reader = {"AWS_ACCESS_KEY_ID": reader_id, "AWS_SECRET_ACCESS_KEY": reader_secret}
    return {
        "malformed-uri": (Case(_run(None, "s3://Not_A_Bucket/run"), "--output", "bucket"), {}),
        "uri-without-bucket": (
            Case(("run", "--set", "output.dir=s3:///runs", *SMALL_RUN), "output.dir", "no bucket"),
            {},
        ),
        "missing-bucket": (
            Case(_run(moto_endpoint, "s3://no-such-bucket/run"), "--output", "does not exist"),
            {},
        ),
        "wrong-credentials": (
            Case(_run(locked_endpoint, f"s3://{locked_bucket}/run"), "--output", "rejected"),
            {},
        ),
        "no-permission": (
            Case(_run(locked_endpoint, f"s3://{locked_bucket}/run"), "--output", "access denied"),
            reader,
        ),
        "unreachable-endpoint": (
            Case(_run(unreachable, "s3://bucket/run"), "--output", "cannot reach"),
            {},
        ),
        "report-of-missing-s3-run": (
            Case(("report", "s3://no-such-bucket/run", "--endpoint-url", moto_endpoint), "report"),
            {},
        ),
        "runs-list-malformed-uri": (Case(("runs", "list", "s3://"), "runs list", "bucket"), {}),
        # `report` probes the endpoint as briefly as `runs list` does (it used to take 25 s)
        "report-unreachable-endpoint": (
            Case(
                ("report", "s3://bucket/run", "--endpoint-url", unreachable),
                "report",
                line=f"report: cannot reach the S3 endpoint {unreachable} (EndpointConnectionError)",
            ),
            {},
        ),
        "runs-list-unreachable-endpoint": (
            Case(
                ("runs", "list", "s3://bucket/runs", "--endpoint-url", unreachable),
                "runs list",
                line=f"runs list: cannot reach the S3 endpoint {unreachable} "
                "(EndpointConnectionError)",
            ),
            {},
        ),
        "endpoint-flag-not-a-url": (
            Case(
                ("runs", "list", "s3://bucket/runs", "--endpoint-url", "not-a-url"),
                "--endpoint-url",
                line="--endpoint-url: expected an http:// or https:// URL, got 'not-a-url'",
            ),
            {},
        ),
        "endpoint-env-not-a-url": (
            Case(
                ("runs", "list", "s3://bucket/runs"),
                "runs list",
                line="runs list: AWS_ENDPOINT_URL: expected an http:// or https:// URL, "
                "got 'not-a-url'",
            ),
            {"AWS_ENDPOINT_URL": "not-a-url"},
        ),
    }


def _run_case(case: Case, env: dict[str, str], folder, hf_cache) -> tuple[Outcome, float]:
    folder.mkdir(parents=True)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", *case.args],
        cwd=folder,
        env={**cli_env(ray_tmp_dir(folder), hf_cache), **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    return Outcome(
        proc.returncode, proc.stdout, proc.stderr, folder, {}
    ), time.monotonic() - started


@pytest.fixture(scope="module")
def outcomes(moto_endpoint, locked_s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3cli")
    cases = _cases(moto_endpoint, locked_s3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_run_case, case, env, root / name, root / "hf-cache")
            for name, (case, env) in cases.items()
        }
        results = {name: f.result() for name, f in futures.items()}
    return {name: (cases[name][0], *results[name]) for name in cases}


NAMES = [
    "malformed-uri",
    "uri-without-bucket",
    "missing-bucket",
    "wrong-credentials",
    "no-permission",
    "unreachable-endpoint",
    "report-of-missing-s3-run",
    "runs-list-malformed-uri",
    "report-unreachable-endpoint",
    "runs-list-unreachable-endpoint",
    "endpoint-flag-not-a-url",
    "endpoint-env-not-a-url",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_s3_storage_exits_2_in_one_line_before_ray(name, outcomes):
    case, out, _ = outcomes[name]
    check_rejected(case, out)
    check_one_line(out)
    check_no_ray(case, out)  # also: nothing written into the (empty) working folder
    assert FAKE_SECRET not in out.stderr + out.stdout
    assert FAKE_KEY_ID not in out.stderr + out.stdout
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out.stderr


def test_report_on_an_unreachable_endpoint_fails_as_fast_as_runs_list(outcomes):
    _, _, report = outcomes["report-unreachable-endpoint"]
    _, _, listing = outcomes["runs-list-unreachable-endpoint"]
    assert report < listing + 5, (report, listing)


def test_unreachable_endpoint_fails_within_seconds(outcomes):
    """The probe's short timeouts: the failing case costs about as much as a case that
    fails on its bucket name alone (both pay the same imports and preflight)."""
    _, _, unreachable = outcomes["unreachable-endpoint"]
    _, _, missing = outcomes["missing-bucket"]
    assert unreachable < missing + 15, (unreachable, missing)
