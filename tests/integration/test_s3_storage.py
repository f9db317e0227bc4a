"""`S3Storage` against a real S3 HTTP endpoint on loopback (moto server): the `Storage`
protocol's checks (tests/helpers/storage_checks.py, which LocalStorage also passes), the
put_dir manifest as commit point, the pyarrow filesystem Ray gets, and the up-front probe's
one-line reasons."""

from __future__ import annotations

import pickle
import time

import pytest
from helpers.checkpoint_folders import NEWER, OLDER, SHARD, two_checkpoint_run
from helpers.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, PausableProxy, list_keys, s3_client
from helpers.storage_checks import CHECKS

from distill.cluster.checkpoints import COMPLETE, newest_intact
from distill.cluster.local_storage import LocalStorage
from distill.cluster.s3_storage import MANIFEST, S3Options, S3Storage, parse_s3_uri
from distill.cluster.storage import StorageError, open_storage


def _storage(endpoint: str, uri: str, **options) -> S3Storage:
    return S3Storage(uri, S3Options(endpoint_url=endpoint, addressing_style="path", **options))


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Bad_Bucket/x", "not a valid bucket"),
        ("s3://ab/x", "not a valid bucket"),
        ("s3://bucket//x", "'//'"),
        ("s3:bucket/x", "not an s3://"),
    ],
)
def test_malformed_uris_are_refused(uri, reason):
    with pytest.raises(StorageError, match=reason):
        parse_s3_uri(uri)


def test_uri_parts_and_open_storage_dispatch(tmp_path):
    assert parse_s3_uri("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert parse_s3_uri("s3://my-bucket") == ("my-bucket", "")
    assert isinstance(open_storage(tmp_path), LocalStorage)
    s3 = open_storage("s3://my-bucket/runs/r1", None)
    assert isinstance(s3, S3Storage) and s3.uri == "s3://my-bucket/runs/r1" and s3.name == "r1"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_s3_storage_keeps_the_protocol(check, moto_endpoint, bucket, tmp_path):
    check(_storage(moto_endpoint, f"s3://{bucket}/runs/r1"), tmp_path)


def test_put_dir_commits_with_a_manifest_that_listings_leave_out(moto_endpoint, bucket, tmp_path):
    store = _storage(moto_endpoint, f"s3://{bucket}/runs/r1")
    src = tmp_path / "student"
    (src / "sub").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"x" * 3000)
    (src / "sub" / "t.json").write_text("{}")
    store.put_dir(src, "student")
    keys = list_keys(moto_endpoint, bucket, "runs/r1/student/")
    assert set(keys) == {f"runs/r1/student/{r}" for r in ("model.bin", "sub/t.json", MANIFEST)}
    assert store.list("student") == ["model.bin", "sub"]
    assert store.list_files("student") == {"model.bin": 3000, "sub/t.json": 2}
    out = store.get_dir("student", tmp_path / "down")
    assert (out / "model.bin").read_bytes() == b"x" * 3000 and not (out / MANIFEST).exists()

    # A folder whose manifest is missing or names a file that is not there is incomplete.
    s3_client(moto_endpoint).delete_object(Bucket=bucket, Key="runs/r1/student/model.bin")
    assert not store.dir_complete("student")
    store.put_dir(src, "student")
    s3_client(moto_endpoint).delete_object(Bucket=bucket, Key=f"runs/r1/student/{MANIFEST}")
    assert not store.dir_complete("student") and store.exists("student/model.bin")
    store.delete("student")
    assert list_keys(moto_endpoint, bucket, "runs/r1/student") == {}


def test_pyarrow_filesystem_reaches_the_endpoint_and_pickles_without_secrets(moto_endpoint, bucket):
    store = _storage(moto_endpoint, f"s3://{bucket}/runs/r1")
    path, fs = store.ray_storage()
    assert path == f"{bucket}/runs/r1"
    with fs.open_output_stream(f"{path}/from-arrow.txt") as f:
        f.write(b"hello")
    assert store.read_text("from-arrow.txt") == "hello"
    blob = pickle.dumps(fs)  # what Ray ships to the workers
    assert FAKE_SECRET.encode() not in blob and FAKE_KEY_ID.encode() not in blob
    assert pickle.loads(blob).get_file_info(f"{path}/from-arrow.txt").size == 5


def test_probe_accepts_a_writable_bucket_and_leaves_nothing(moto_endpoint, bucket):
    _storage(moto_endpoint, f"s3://{bucket}/runs/r1").probe()
    assert list_keys(moto_endpoint, bucket) == {}


def test_probe_names_a_missing_bucket(moto_endpoint):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        _storage(moto_endpoint, "s3://no-such-bucket/r").probe()


def test_probe_fails_fast_on_an_unreachable_endpoint():
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        _storage("http://127.0.0.1:9", "s3://bucket/r").probe()
    assert time.monotonic() - started < 15


def test_probe_fails_fast_on_an_endpoint_that_never_answers(moto_endpoint):
    proxy = PausableProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    proxy.pause()
    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match="cannot reach|bucket"):
            _storage(proxy.endpoint, "s3://bucket/r").probe()
    finally:
        proxy.close()
    assert time.monotonic() - started < 20


def test_probe_tells_wrong_keys_from_missing_permission(locked_s3, monkeypatch):
    endpoint, bucket, (reader_id, reader_secret) = locked_s3
    with pytest.raises(StorageError, match="credentials were rejected"):
        _storage(endpoint, f"s3://{bucket}/r").probe()  # the fake keys: unknown to IAM
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader_secret)
    with pytest.raises(StorageError, match="access denied") as err:
        _storage(endpoint, f"s3://{bucket}/r").probe()
    assert reader_secret not in str(err.value) and reader_id not in str(err.value)


def test_checkpoints_verify_their_checksums_in_s3(moto_endpoint, bucket):
    """The manifest written through pyarrow's S3 filesystem (as Ray Train's controller
    writes it) catches a flipped byte and a truncated file in the bucket."""
    run = two_checkpoint_run(_storage(moto_endpoint, f"s3://{bucket}/runs/r1"))
    assert COMPLETE in run.list(f"train/{NEWER}")
    assert newest_intact(run).intact["name"] == NEWER
    data = bytearray(run.get(f"train/{NEWER}/{SHARD}"))
    data[7] ^= 0xFF
    run.put(f"train/{NEWER}/{SHARD}", bytes(data))
    choice = newest_intact(run)
    assert choice.intact["name"] == OLDER and choice.intact["step"] == 4
    assert choice.damaged[0][1] == f"{SHARD}: sha256 differs from the manifest"
    run.put(f"train/{NEWER}/{SHARD}", bytes(data[:100]))
    assert newest_intact(run).damaged[0][1] == f"{SHARD}: 100 bytes, expected {len(data)}"
