"""One cluster address rule: an explicit `--address` always wins over `RAY_ADDRESS` (and
`RAY_API_SERVER_ADDRESS`), and the client talks to the cluster `distill` names; `distill run`
takes a Ray (GCS) address and turns a dashboard URL into one line, exit 2, before Ray.

Two fake dashboards on loopback (a thread each, answering the Jobs API's version and job
list) stand in for two clusters: each records the requests it got."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distill.core.spec import SpecError
from distill.jobs import cli
from distill.jobs.cluster_client import client, cluster_address, run_address


class _FakeDashboard:
    def __init__(self) -> None:
        self.paths: list[str] = []
        seen = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                seen.append(self.path)
                body = {"ray_version": "2.60.0"} if self.path.startswith("/api/version") else []
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def two_clusters(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    a, b = _FakeDashboard(), _FakeDashboard()
    yield a, b
    a.close()
    b.close()


def test_explicit_address_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://cluster-b:8265")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://cluster-c:8265")
    assert cluster_address("http://cluster-a:8265") == "http://cluster-a:8265"
    assert cluster_address(None) == "http://cluster-c:8265"  # Ray's own order
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    assert cluster_address(None) == "http://cluster-b:8265"


def test_the_client_resolves_to_the_explicit_address_not_ray_address(two_clusters, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    a, b = two_clusters
    monkeypatch.setenv("RAY_ADDRESS", b.url)
    # Ray's own client lets RAY_ADDRESS override the address it is given (the bug):
    assert JobSubmissionClient(a.url).get_address() == b.url
    b.paths.clear()
    c = client(a.url)
    assert c.get_address() == a.url
    assert a.paths and not b.paths
    assert __import__("os").environ["RAY_ADDRESS"] == b.url  # restored afterwards


def test_distill_jobs_goes_where_it_says(two_clusters, monkeypatch, capsys):
    a, b = two_clusters
    monkeypatch.setenv("RAY_ADDRESS", b.url)
    assert cli.main(["jobs", "--address", a.url]) == 0
    assert capsys.readouterr().out.strip() == "no jobs"
    assert any(p.startswith("/api/jobs") for p in a.paths)
    assert not b.paths


def test_submit_refuses_a_gcs_address_in_one_line(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    with pytest.raises(
        SpecError,
        match=r"^RAY_ADDRESS: 10.0.0.7:6379 is a Ray \(GCS\) address.*http://10.0.0.7:8265",
    ):
        cluster_address(None)


@pytest.mark.parametrize("address", ["10.0.0.7:6379", "auto", "ray://head:10001", "[::1]:6379"])
def test_run_takes_ray_addresses(address, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run_address(address) == address


def test_run_address_flag_wins_over_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://cluster-b:8265")
    assert run_address("10.0.0.7:6379") == "10.0.0.7:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert run_address(None) is None  # a local Ray


@pytest.mark.parametrize(
    ("flag", "env", "names"),
    [
        (
            ["--address", "http://head:8265"],
            None,
            "--address: http://head:8265 is a Ray dashboard URL",
        ),
        ([], "http://head:8265", "RAY_ADDRESS: http://head:8265 is a Ray dashboard URL"),
        (["--address", "head"], None, "--address: 'head' is not a Ray address"),
    ],
)
def test_run_with_the_wrong_kind_of_address_is_one_line_before_ray(
    flag, env, names, monkeypatch, capsys
):
    import sys

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    for module in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, module)  # so "before Ray" is visible
    assert cli.main(["run", *flag]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"distill: error: {names}")
    assert "ray" not in sys.modules


def test_version_names_the_stack(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("distill 0.1.0 (torch ")
    assert "deepspeed" in line and "transformers" in line and "Python 3." in line


def test_every_command_help_ends_with_examples(capsys):
    import pathlib

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    repo = pathlib.Path(__file__).resolve().parents[3]
    for name, command in sub.choices.items():
        assert command.epilog and command.epilog.startswith("examples:\n"), name
        for line in cli.EXAMPLES[name]:
            assert line.startswith("distill ")
            assert "../shared" not in line
            for word in line.split():
                if word.startswith("examples/"):
                    assert (repo / word).is_file(), word
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "examples:\n  distill run " in capsys.readouterr().out
