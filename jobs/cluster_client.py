"""The connection to a Ray cluster's Jobs API: the dashboard address (`--address`, else
`RAY_ADDRESS`), the auth token (Ray token auth, `RAY_AUTH_MODE=token` on the cluster), a
`JobSubmissionClient`, and the mapping of its failures (unreachable dashboard, missing or
wrong token, unknown job, rejected `runtime_env`) to one-line `SpecError`s. The token comes
from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` (Ray's
own order), and is sent only as an HTTP `Authorization` header: it is never printed, never
put in a job's `runtime_env` or metadata, and never written to the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from distill.core.spec import SpecError, url_problem

DASHBOARD_PORT = 8265

T = TypeVar("T")


def cluster_address(address: str | None) -> str:
    """`--address`, else `RAY_ADDRESS`; a bare host gets the dashboard's http port."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SpecError(
            "--address: no cluster given; pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    if address == "auto":
        return address  # Ray finds the cluster this machine belongs to
    if "://" not in address:
        host = address.split(":")[0]
        address = f"http://{host}:{DASHBOARD_PORT}" if address.count(":") == 0 else address
        address = address if "://" in address else f"http://{address}"
    problem = url_problem(address)
    if problem:
        raise SpecError(f"--address: {problem}; give the Ray dashboard URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def auth_token() -> str | None:
    """The cluster token, found where Ray itself looks: `RAY_AUTH_TOKEN`, the file named by
    `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token` (skipped when `RAY_AUTH_MODE=disabled`).
    None when there is none. Never log the value."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise SpecError(f"RAY_AUTH_TOKEN_PATH: cannot read {path} ({exc.strerror})") from None
        if not token:
            raise SpecError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and default.is_file():
        return default.read_text().strip() or None
    return None


def client(address: str | None):
    """A `JobSubmissionClient` for the cluster; connection and auth failures are SpecErrors."""
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in ("ray.dashboard", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)  # per-package upload chatter
    url = cluster_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise SpecError(_auth_message(url, exc, token is not None)) from None
    except (ConnectionError, OSError) as exc:
        raise SpecError(
            f"--address {url}: cannot reach the Ray dashboard ({type(exc).__name__})"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise SpecError(f"--address {url}: {_first_line(exc)}") from None


def _auth_message(url: str, exc: Exception, had_token: bool) -> str:
    if had_token or "403" in str(exc) or "Forbidden" in str(exc):
        return (
            f"--address {url}: the cluster rejected the auth token (wrong token for this cluster)"
        )
    return (
        f"--address {url}: the cluster requires an auth token (RAY_AUTH_MODE=token); "
        "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def call(address: str, fn: Callable[..., T], *args, job: str | None = None) -> T:
    """`fn(*args)`, one client call to the cluster at `address` (a `cluster_address`); a
    missing `job`, an auth failure or an unreachable dashboard becomes a one-line SpecError."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as exc:
        raise SpecError(_auth_message(address, exc, auth_token() is not None)) from None
    except RuntimeError as exc:
        if job and ("404" in str(exc) or "does not exist" in str(exc)):
            raise SpecError(f"{job}: no such job on {address}") from None
        raise SpecError(f"--address {address}: {_first_line(exc)}") from None
    except (ConnectionError, OSError) as exc:
        raise SpecError(
            f"--address {address}: cannot reach the Ray dashboard ({type(exc).__name__})"
        ) from None


def send_job(
    address: str | None, entrypoint: str, renv: dict, metadata: dict, job_id: str | None
) -> str:
    """Submit `entrypoint` with its `runtime_env` and metadata; returns the submission id.
    A `runtime_env` that Ray's own validation rejects is a SpecError naming `runtime_env`."""
    c = client(address)
    url = cluster_address(address)
    try:
        return call(
            url,
            lambda: c.submit_job(
                entrypoint=entrypoint,
                runtime_env=renv,
                metadata=metadata,
                submission_id=job_id,
            ),
        )
    except ValueError as exc:  # runtime_env rejected by Ray's own validation
        raise SpecError(f"runtime_env: {_first_line(exc)}") from None
