"""The `Storage` protocol's behaviour, as checks any implementation must pass. Each takes an
empty storage and a scratch local folder; tests/unit/cluster/test_storage.py runs them on
`LocalStorage`, tests/integration/test_s3_storage.py on `S3Storage` against moto.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from distill.cluster.storage import Lease, LeaseHeld, Storage, StorageError, StorageNotFound
from distill.cluster.storage_protocol import LEASE_FILE


def lease(token: str, *, host: str = "node-a", pid: int = 4242, ttl_s: float = 60.0) -> Lease:
    """A lease of another (made-up) writer, valid for `ttl_s` seconds after it is written
    (negative: expired)."""
    now = time.time()
    return Lease(token=token, host=host, pid=pid, started=now - 5, expires=now + ttl_s, ttl_s=ttl_s)


def _held(store: Storage) -> Lease | None:
    """The folder's holder (None: no lease, or a released one), without the generation
    the storage added, to compare with the lease that was taken."""
    held, _ = store.read_lease()
    return None if held is None or held.released else dataclasses.replace(held, generation=0)


def lease_free(store: Storage) -> bool:
    """Nobody holds the folder: no lease, or one its holder released (kept for the count)."""
    held, _ = store.read_lease()
    return held is None or held.released


def _generation(store: Storage) -> int:
    held, _ = store.read_lease()
    return held.generation


def _local_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def check_implements_the_protocol(store: Storage, scratch: Path) -> None:
    assert isinstance(store, Storage)
    assert isinstance(store.child("x"), Storage)


def check_files_round_trip(store: Storage, scratch: Path) -> None:
    data = bytes(range(256))  # not UTF-8: bytes come back as they went in
    store.put("a/b/blob.bin", data)
    assert store.get("a/b/blob.bin") == data
    store.write_text("notes.txt", "naïve ✓\nline 2\n")
    assert store.read_text("notes.txt") == "naïve ✓\nline 2\n"
    assert store.get("notes.txt") == "naïve ✓\nline 2\n".encode()
    store.write_text("notes.txt", "replaced")
    assert store.read_text("notes.txt") == "replaced"
    assert store.exists("a/b/blob.bin") and store.exists("a") and store.exists("notes.txt")


def check_missing_paths(store: Storage, scratch: Path) -> None:
    store.write_text("present.txt", "x")
    assert not store.exists("absent.txt") and not store.exists("absent/inner.txt")
    for read in (store.get, store.read_text):
        with pytest.raises(StorageNotFound, match="absent"):
            read("absent/inner.txt")
    with pytest.raises(StorageError):  # StorageNotFound is a StorageError ...
        store.get("absent.txt")
    with pytest.raises(FileNotFoundError):  # ... and a FileNotFoundError
        store.get("absent.txt")
    with pytest.raises(StorageNotFound):
        store.get_dir("absent", scratch / "down")
    assert not store.dir_complete("absent")
    assert store.list("absent") == [] and store.list_files("absent") == {}
    store.delete("absent")  # nothing there: not an error
    store.delete("absent/inner.txt")
    assert store.list() == ["present.txt"]


def check_child_prefixes_paths(store: Storage, scratch: Path) -> None:
    run = store.child("runs").child("r1")
    assert run.uri == f"{store.uri}/runs/r1" and run.name == "r1"
    assert store.child("runs/r1").uri == run.uri
    run.write_text("config.yaml", "a: 1\n")
    assert store.read_text("runs/r1/config.yaml") == "a: 1\n"
    store.write_text("runs/r1/metrics.jsonl", "{}\n")
    assert run.read_text("metrics.jsonl") == "{}\n"
    assert store.list() == ["runs"] and store.list("runs") == ["r1"]
    assert run.list() == ["config.yaml", "metrics.jsonl"]
    assert not run.exists("runs/r1/config.yaml")


def check_listing(store: Storage, scratch: Path) -> None:
    store.put("b.txt", b"12")
    store.put("a/one.bin", b"1")
    store.put("a/sub/two.bin", b"22")
    store.put("a/sub/deeper/three.bin", b"333")
    assert store.list() == ["a", "b.txt"]
    assert store.list("a") == ["one.bin", "sub"]
    assert store.list_files("a") == {"one.bin": 1, "sub/two.bin": 2, "sub/deeper/three.bin": 3}
    assert store.list_files() == {
        "b.txt": 2,
        "a/one.bin": 1,
        "a/sub/two.bin": 2,
        "a/sub/deeper/three.bin": 3,
    }


def check_folders_round_trip(store: Storage, scratch: Path) -> None:
    first = {"model.bin": b"x" * 3000, "sub/t.json": b"{}", "sub/deep/v.txt": b"v"}
    store.put_dir(_local_folder(scratch / "v1", first), "student")
    assert store.dir_complete("student") and store.exists("student")
    assert store.list("student") == ["model.bin", "sub"]
    assert store.list_files("student") == {rel: len(data) for rel, data in first.items()}
    out = store.get_dir("student", scratch / "down1")
    assert out == scratch / "down1" and _read_folder(out) == first

    # Replacing: files the new copy lacks are gone, changed ones are new.
    second = {"model.bin": b"y" * 10, "other.txt": b"o"}
    store.put_dir(_local_folder(scratch / "v2", second), "student")
    assert store.dir_complete("student")
    assert store.list_files("student") == {"model.bin": 10, "other.txt": 1}
    assert _read_folder(store.get_dir("student", scratch / "down2")) == second


def check_delete(store: Storage, scratch: Path) -> None:
    store.put("keep.txt", b"k")
    store.put("gone.txt", b"g")
    store.put_dir(_local_folder(scratch / "src", {"a.bin": b"a", "sub/b.bin": b"b"}), "folder")
    store.delete("gone.txt")
    assert not store.exists("gone.txt") and store.read_text("keep.txt") == "k"
    store.delete("folder")
    assert not store.exists("folder") and not store.dir_complete("folder")
    assert store.list_files("folder") == {}
    assert store.list() == ["keep.txt"]


def check_lease_has_one_holder(store: Storage, scratch: Path) -> None:
    first = lease("first")
    assert store.acquire_lease(first) is None and _held(store) == first
    with pytest.raises(LeaseHeld) as refused:
        store.acquire_lease(lease("second", host="node-b", pid=7))
    assert refused.value.holder.token == first.token
    message = str(refused.value)
    assert (
        "\n" not in message and "host node-a, pid 4242, since " in message and "--force" in message
    )
    assert _held(store) == first

    renewed = dataclasses.replace(first, expires=first.expires + 100)  # same token: renewal
    assert store.acquire_lease(renewed) is None and _held(store) == renewed

    store.release_lease(lease("second"))  # not the holder: nothing happens
    assert _held(store) == renewed
    assert _generation(store) == 1  # the first holder; a renewal keeps its generation
    store.release_lease(first)
    assert _held(store) is None
    released, _ = store.read_lease()  # kept, marked released, so the count goes on
    assert released.released and released.token == "first"
    second = lease("second", host="node-b", pid=7)
    assert store.acquire_lease(second) is None and _held(store) == second
    assert _generation(store) == 2


def check_expired_or_forced_leases_are_taken_over(store: Storage, scratch: Path) -> None:
    stale = lease("stale", ttl_s=-1)  # its writer stopped renewing a second ago
    store.acquire_lease(stale)
    fresh = lease("fresh", host="node-b")
    assert store.acquire_lease(fresh).token == stale.token and _held(store) == fresh

    forced = lease("forced", host="node-c")
    with pytest.raises(LeaseHeld):
        store.acquire_lease(forced)
    assert store.acquire_lease(forced, force=True).token == fresh.token and _held(store) == forced
    # The writer that lost its lease can neither renew nor release it.
    with pytest.raises(LeaseHeld):
        store.acquire_lease(dataclasses.replace(fresh, expires=time.time() + 60))
    store.release_lease(fresh)
    assert _held(store) == forced

    assert _generation(store) == 3  # stale 1, fresh 2, forced 3

    store.put(LEASE_FILE, b'{"token": "half-wr')  # a writer died while creating it
    assert store.acquire_lease(fresh) is None and _held(store) == fresh


def check_lease_expiry_uses_the_storages_clock(store: Storage, scratch: Path) -> None:
    """A lease whose holder's clock runs an hour fast (its `expires` far ahead) still
    expires `ttl_s` after its last write as the storage measures it, and one whose holder's
    clock runs an hour slow (`expires` long past) is still valid within its ttl."""
    now = time.time()
    fast = Lease("fast", "node-a", 1, now + 3600, now + 3600 + 1.5, ttl_s=1.5)
    store.acquire_lease(fast)
    _, age = store.read_lease()
    assert age is not None and 0 <= age < 1.5
    with pytest.raises(LeaseHeld):
        store.acquire_lease(lease("next", host="node-b"))
    time.sleep(2.6)  # S3 dates have whole seconds: past ttl_s on any rounding
    assert store.acquire_lease(lease("next", host="node-b")).token == "fast"

    slow = Lease("slow", "node-c", 2, now - 3600, now - 3600 + 60, ttl_s=60)
    store.acquire_lease(slow, force=True)
    with pytest.raises(LeaseHeld):
        store.acquire_lease(lease("other", host="node-d"))


CHECKS = [
    check_implements_the_protocol,
    check_files_round_trip,
    check_missing_paths,
    check_child_prefixes_paths,
    check_listing,
    check_folders_round_trip,
    check_delete,
    check_lease_has_one_holder,
    check_expired_or_forced_leases_are_taken_over,
    check_lease_expiry_uses_the_storages_clock,
]
