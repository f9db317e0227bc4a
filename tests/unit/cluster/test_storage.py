"""`LocalStorage` against the `Storage` protocol's checks (tests/helpers/storage_checks.py,
which S3Storage also passes in tests/integration/test_s3_storage.py), plus what is local:
atomic writes leave no temporary files, and `open_storage` opens a path without boto3."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.storage_checks import CHECKS

from distill.cluster.local_storage import LocalStorage
from distill.cluster.storage import is_s3_uri, open_storage


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_local_storage_keeps_the_protocol(check, tmp_path):
    (tmp_path / "scratch").mkdir()
    check(LocalStorage(tmp_path / "store"), tmp_path / "scratch")


def test_writes_and_folder_replacements_leave_no_temporary_files(tmp_path):
    store = LocalStorage(tmp_path / "run")
    store.write_text("config.yaml", "a: 1\n")
    store.write_text("config.yaml", "a: 2\n")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "w.bin").write_bytes(b"1")
    store.put_dir(tmp_path / "v1", "student")
    store.put_dir(tmp_path / "v1", "student")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "student"]


def test_open_storage_opens_a_path_as_local_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_storage("runs/r1")
    assert isinstance(store, LocalStorage)
    assert store.uri == str(tmp_path.resolve() / "runs" / "r1") and store.name == "r1"
    assert store.ray_storage() == (store.uri, None)
    assert is_s3_uri("s3://bucket/x") and not is_s3_uri(tmp_path)


@pytest.mark.parametrize(
    "module, absent",
    [
        ("distill.cluster.local_storage", ("distill.cluster.s3_storage", "boto3")),
        ("distill.cluster.s3_storage", ("distill.cluster.local_storage",)),
    ],
)
def test_the_implementations_do_not_import_each_other(module, absent):
    code = f"import sys, {module}; print(*(m in sys.modules for m in {absent!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * len(absent)
