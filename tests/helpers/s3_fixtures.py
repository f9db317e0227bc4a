"""S3 on loopback for the tests: a moto server in this process (real HTTP, so pyarrow's AWS
C++ SDK reaches it too), a second moto server with IAM auth switched on (for wrong keys and
missing permissions), and a TCP proxy the tests can pause to simulate an outage.

Imported by conftest.py. The AWS credentials below are fake and set at import, before any
test starts Ray, so Ray workers inherit them through the standard AWS chain like in a real
deployment; tests assert that these values never show up in what a run writes or prints.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

FAKE_KEY_ID = "AKIADISTILLTESTKEY42"
FAKE_SECRET = "distill-test-secret-0f9a8b7c6d5e4f3a"
os.environ.update(
    AWS_ACCESS_KEY_ID=FAKE_KEY_ID,
    AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
    AWS_DEFAULT_REGION="us-east-1",
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(endpoint_url: str, **credentials):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", **credentials)


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """`http://127.0.0.1:PORT` of a moto S3 server running in a thread of this process."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint) -> str:
    """A fresh, empty bucket for one test."""
    name = f"distill-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


def list_keys(endpoint_url: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """{key: size} of every object under `prefix`."""
    pages = s3_client(endpoint_url).get_paginator("list_objects_v2")
    return {
        o["Key"]: o["Size"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    }


@pytest.fixture(scope="session")
def locked_s3():
    """A moto server (subprocess) enforcing IAM: returns (endpoint, bucket, reader_keys) where
    reader_keys may read but not write the bucket. The first 4 requests are unauthenticated
    (moto's INITIAL_NO_AUTH_ACTION_COUNT) and set it up."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        s3_client(endpoint).create_bucket(Bucket="locked")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="ro", PolicyDocument=json.dumps(policy))
        yield endpoint, "locked", (key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class PausableProxy:
    """A loopback TCP proxy in front of `upstream` port. `pause()` cuts every open
    connection and refuses new ones (they are accepted and closed at once), like an
    endpoint that went away; `resume()` forwards again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.paused = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.refused = 0
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.paused.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._conns.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def pause(self) -> None:
        self.paused.set()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def resume(self) -> None:
        self.paused.clear()

    def close(self) -> None:
        self._listener.close()
        self.pause()
