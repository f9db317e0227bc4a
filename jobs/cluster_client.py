"""The connection to a Ray cluster's Jobs API: the dashboard address (`--address`, else
`RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS`), the auth token (Ray token auth, `RAY_AUTH_MODE=token` on the cluster), a
`JobSubmissionClient`, and the mapping of its failures (unreachable dashboard, missing or
wrong token, unknown job, rejected `runtime_env`) to one-line `SpecError`s. The token comes
from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` (Ray's
own order), and is sent only as an HTTP `Authorization` header: it is never printed, never
put in a job's `runtime_env` or metadata, and never written to the run.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from distill.core.spec import SpecError, url_problem

DASHBOARD_PORT = 8265
GCS_PORT = 6379
# Environment variables through which Ray's own clients find a cluster, in Ray's order.
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9._:-]+?\]?:(\d{1,5})$")

T = TypeVar("T")


def cluster_address(address: str | None) -> str:
    """The dashboard URL of the cluster a job goes to: `--address` always, else
    `RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS` (Ray's own order); a bare host gets the
    dashboard's http port. A Ray (GCS) address `HOST:6379` is refused in one line."""
    field = "--address"
    if not address:
        field, address = next(
            ((name, os.environ[name]) for name in _ADDRESS_VARIABLES if os.environ.get(name)),
            (field, None),
        )
    if not address:
        raise SpecError(
            "--address: no cluster given; pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    if address == "auto":
        return address  # Ray finds the cluster this machine belongs to
    match = _HOST_PORT.match(address)
    if match and int(match.group(1)) == GCS_PORT:
        host = address.rsplit(":", 1)[0]
        raise SpecError(
            f"{field}: {address} is a Ray (GCS) address; jobs go to the cluster's dashboard "
            f"URL, e.g. http://{host}:{DASHBOARD_PORT}"
        )
    if "://" not in address:
        host = address.split(":")[0]
        address = f"http://{host}:{DASHBOARD_PORT}" if address.count(":") == 0 else address
        address = address if "://" in address else f"http://{address}"
    problem = url_problem(address)
    if problem:
        raise SpecError(f"{field}: {problem}; give the Ray dashboard URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def run_address(address: str | None) -> str | None:
    """The Ray address `distill run` joins: `--address` always, else `RAY_ADDRESS`, else
    None (a local Ray of its own). It must be a Ray (GCS) address, `HOST:PORT`, `auto`, or
    a Ray Client `ray://HOST:10001`; a dashboard URL (what `distill submit` takes) or any
    other form is one SpecError naming the flag or variable, before Ray starts."""
    field = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    if address.startswith(("http://", "https://")):
        raise SpecError(
            f"{field}: {address} is a Ray dashboard URL, which is where `distill submit` sends "
            f"jobs; `distill run` joins a cluster by its Ray address (HEAD:{GCS_PORT}, or auto "
            f"on a cluster node): run `distill submit --address {address}` instead"
        )
    if address == "auto" or re.match(r"^ray://[^/:]+(:\d{1,5})?/?$", address):
        return address
    match = _HOST_PORT.match(address)
    if match and 0 < int(match.group(1)) < 65536:
        return address
    raise SpecError(
        f"{field}: {address!r} is not a Ray address; expected HOST:{GCS_PORT}, auto, or "
        "ray://HOST:10001"
    )


@contextlib.contextmanager
def _address_variables_cleared():
    """Ray's submission client lets `RAY_ADDRESS` / `RAY_API_SERVER_ADDRESS` override the
    address it is given: inside, they are unset, so the client goes where we say."""
    saved = {name: os.environ.pop(name) for name in _ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


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
        with _address_variables_cleared():
            c = JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise SpecError(_auth_message(url, exc, token is not None)) from None
    except (ConnectionError, OSError) as exc:
        raise SpecError(
            f"--address {url}: cannot reach the Ray dashboard ({type(exc).__name__})"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise SpecError(f"--address {url}: {_first_line(exc)}") from None
    resolved = c.get_address().rstrip("/")
    if url != "auto" and resolved != url:  # never print one cluster and use another
        raise SpecError(f"--address {url}: Ray's client resolved it to {resolved}")
    return c


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
