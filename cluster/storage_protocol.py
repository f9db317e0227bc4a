"""The one interface a run's storage offers (`Storage`), and its errors. Implementations:
`LocalStorage` (cluster/local_storage.py) and `S3Storage` (cluster/s3_storage.py); each
imports only this module, never the other. `open_storage` (cluster/storage.py) picks one
from the URI, and callers are typed against `Storage`.

Paths are relative to the storage's root and `/`-separated. Writes are atomic: a file
appears whole or not at all, and a folder written with `put_dir` reads as complete
(`dir_complete`) only once all of it is there.

One writer per run folder: a run holds a `Lease` on its folder (`LEASE_FILE` at its root,
created only if absent, renewed while the run lives, released when it ends); a second
writer is refused with `LeaseHeld`, which names the holder.

Fencing: every lease carries a `generation`, one more than the lease it replaced (a
released lease stays in the file, marked `released`, so the count never restarts). Each
process that writes a run folder under a lease registers a `Fence` for it (`fence_writes`);
every write an implementation makes under that folder first calls `check_fenced(uri)`,
which reads the lease back and raises `LeaseLost` when its holder is no longer this
writer. A writer that lost its lease therefore stops at its next write, one read later.

Expiry never compares two hosts' clocks: `read_lease` returns the lease with its *age* as
the storage measures it (local disk: now minus the file's mtime, both on this host; S3: the
response's `Date` minus the object's `Last-Modified`, both S3's clock), and a lease is
expired once that age reaches its `ttl_s`: the time since its holder last renewed it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow.fs


class StorageError(ValueError):
    """The storage location is malformed, missing or unreachable; one line, no secrets."""


class StorageNotFound(StorageError, FileNotFoundError):
    """Nothing is stored at that path. Also a FileNotFoundError, so code that reads local
    files and storage alike catches both with one clause."""


LEASE_FILE = ".lease.json"


@dataclass(frozen=True)
class Lease:
    """Who writes a run folder, until when: the content of `LEASE_FILE`. `token` tells
    one holder from another (a renewal keeps it); `generation` is the fencing number (the
    storage sets it: one more than the lease replaced); `ttl_s` how long it lasts after its
    last renewal; `released` marks a lease its holder gave back (kept for the count).
    `started` and `expires` are the holder's clock (Unix seconds), shown to people only."""

    token: str
    host: str
    pid: int
    started: float
    expires: float
    ttl_s: float = 0.0  # 0: a lease written before ttl_s was recorded (expiry by `expires`)
    generation: int = 0
    released: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Lease | None:
        """The lease in `text`, or None when it is not one (a damaged or half-written file)."""
        try:
            raw = json.loads(text)
            return cls(
                token=str(raw["token"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                started=float(raw["started"]),
                expires=float(raw["expires"]),
                ttl_s=float(raw.get("ttl_s", 0.0)),
                generation=int(raw.get("generation", 0)),
                released=bool(raw.get("released", False)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def expired(self, age_s: float | None = None) -> bool:
        """Whether the lease ran out: `age_s` (seconds since it was last written, measured
        by the storage) reached `ttl_s`. Without an age, or for a lease that records no
        `ttl_s`, its holder's `expires` against this host's clock (skew counts then)."""
        if self.released:
            return True
        if age_s is not None and self.ttl_s:
            return age_s >= self.ttl_s
        return time.time() >= self.expires

    def successor(self, new: Lease) -> Lease:
        """`new` as written over this lease: a renewal (same token) keeps this generation,
        a new holder gets the next one."""
        same = new.token == self.token
        return replace(new, generation=self.generation if same else self.generation + 1)

    def describe(self) -> str:
        """`host H, pid P, since 2026-11-30 15:44:01 UTC, lease until 15:46:01 UTC`."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        until = time.strftime("%H:%M:%S UTC", time.gmtime(self.expires))
        return f"host {self.host}, pid {self.pid}, since {since}, lease until {until}"


class LeaseHeld(StorageError):
    """Another writer holds the run folder's lease (`holder`), and it is still valid."""

    def __init__(self, uri: str, holder: Lease) -> None:
        self.holder = holder
        super().__init__(
            f"{uri} is in use by another run ({holder.describe()}); wait for it to end "
            "or for its lease to expire, or pass --force to take over"
        )


class LeaseLost(StorageError):
    """This writer's lease on a run folder is gone: another writer (`holder`) took it over
    (or the lease file was removed). The writer stops: it must not write there again."""

    def __init__(self, uri: str, holder: Lease | None) -> None:
        self.holder = holder
        if holder is None or holder.released:
            whom = "nobody (the lease file was removed)"
        else:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.started))
            whom = f"{holder.host}/{holder.pid} at {since}"
        super().__init__(f"lost the lease on {uri} to {whom}; stopped writing")


@dataclass(frozen=True)
class Fence:
    """The lease this process writes a folder under: the folder's storage (`root`), and the
    holder's `token` and `generation`."""

    root: Storage
    token: str
    generation: int

    def check(self) -> None:
        """Raise `LeaseLost` unless the folder's lease is still this writer's. A lease that
        cannot be read (the storage unreachable) is not a lost one: the write that follows
        fails or succeeds on its own, as it would without a fence, so an outage shorter
        than the storage's retries does not stop a run."""
        try:
            held, _ = self.root.read_lease()
        except Exception:  # noqa: BLE001 - an outage, not a verdict (see above)
            return
        if held is None or held.token != self.token or held.released:
            raise LeaseLost(self.root.uri, held)


# Folders this process writes under a lease: {root uri: Fence} (`fence_writes`).
_FENCES: dict[str, Fence] = {}


def fence_writes(fence: Fence) -> None:
    """From now on every write under `fence.root` checks the lease first."""
    _FENCES[fence.root.uri.rstrip("/")] = fence


def unfence(uri: str) -> None:
    """Writes under `uri` are no longer checked (its lease was released)."""
    _FENCES.pop(uri.rstrip("/"), None)


def fence_covering(uri: str) -> Fence | None:
    """The fence of the leased folder `uri` lies in (the innermost), or None."""
    uri = uri.rstrip("/")
    found = [r for r in list(_FENCES) if uri == r or uri.startswith(r + "/")]
    return _FENCES.get(max(found, key=len)) if found else None


def check_fenced(uri: str) -> None:
    """Called by a storage before it writes anything at `uri`: `LeaseLost` when `uri` lies
    in a folder this process writes under a lease that is no longer its own."""
    fence = fence_covering(uri)
    if fence is not None:
        fence.check()


# Tokens of the leases this process holds now (`distill.cluster.lease.hold_lease` adds each
# when it takes a lease and removes it when its block ends).
HELD_HERE: set[str] = set()


def left_by_this_process(held: Lease | None) -> bool:
    """The lease names this very process but none of the leases it holds now: an earlier
    holder in this process ended without releasing it (its storage was unreachable at the
    end, e.g. an S3 outage that also failed the run), so nothing writes under it any more."""
    return (
        held is not None
        and held.host == socket.gethostname()
        and held.pid == os.getpid()
        and held.token not in HELD_HERE
    )


def may_take_over(
    held: Lease | None, new: Lease, *, force: bool, age_s: float | None = None
) -> bool:
    """Whether `new` may replace the lease `held` in the folder: it is `new`'s own (a
    renewal), unreadable (a writer died while creating it), released, expired (`age_s`:
    seconds since it was last written, on the storage's clock), left behind by an ended
    holder in this process, or `force` says so."""
    return (
        held is None
        or held.token == new.token
        or held.expired(age_s)
        or left_by_this_process(held)
        or force
    )


def replaced(held: Lease | None, new: Lease) -> Lease | None:
    """What `acquire_lease` returns after writing `new` over `held`: the other holder's
    lease it replaced, or None (there was none, `new` renewed its own, or it was released)."""
    if held is None or held.token == new.token or held.released:
        return None
    return held


def is_s3_uri(uri: str | Path) -> bool:
    """Whether `uri` names S3 (`s3://bucket/prefix`) rather than a local path."""
    return str(uri).startswith("s3:")


@runtime_checkable
class Storage(Protocol):
    """A run (or sweep) folder: files and folders under one root."""

    @property
    def uri(self) -> str:
        """Where the root is (a local path or `s3://bucket/prefix`); `open_storage` reopens it."""
        ...

    @property
    def name(self) -> str:
        """The root's last path component (the run's name)."""
        ...

    def child(self, relpath: str) -> Storage:
        """The same storage rooted at `relpath`: its paths are this one's `relpath/...`."""
        ...

    def ray_storage(self) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """(storage_path, storage_filesystem) for `ray.train.RunConfig`."""
        ...

    def exists(self, relpath: str) -> bool:
        """A file or a non-empty folder is at `relpath`."""
        ...

    def get(self, relpath: str) -> bytes:
        """The file's bytes; StorageNotFound when there is no file at `relpath`."""
        ...

    def put(self, relpath: str, data: bytes) -> None:
        """Write (or replace) a file atomically, creating its folders."""
        ...

    def read_text(self, relpath: str) -> str:
        """`get` decoded as UTF-8."""
        ...

    def write_text(self, relpath: str, text: str) -> None:
        """`put` of the UTF-8 encoded text."""
        ...

    def append_text(self, relpath: str, text: str) -> None:
        """Add `text` to the end of a file (created if missing), durably before returning:
        a reader sees it at once (local disk: appended and flushed; S3, which has no
        append: the object rewritten whole, so keep such files small)."""
        ...

    def get_dir(self, relpath: str, local_dir: str | Path) -> Path:
        """Copy the folder at `relpath` into `local_dir` (created); returns it.
        StorageNotFound when there is no folder there."""
        ...

    def put_dir(self, local_dir: str | Path, relpath: str) -> None:
        """Copy a local folder to `relpath`, replacing what was there (files the new copy
        lacks go); readers see the old or the new folder, never a half-written one."""
        ...

    def dir_complete(self, relpath: str) -> bool:
        """A `put_dir` to `relpath` finished (an interrupted one reads as incomplete)."""
        ...

    def list(self, relpath: str = "") -> list[str]:
        """Sorted names of the files and folders directly in `relpath` ([] when missing)."""
        ...

    def list_files(self, relpath: str = "") -> dict[str, int]:
        """Every file under `relpath`, recursively: {path relative to relpath: size}."""
        ...

    def delete(self, relpath: str) -> None:
        """Remove a file or a whole folder; nothing there is not an error."""
        ...

    def probe(self) -> None:
        """Check up front, in seconds, that a run can write here; StorageError if not."""
        ...

    def check_readable(self) -> None:
        """Check up front, in seconds, that the location can be read; StorageError if not
        (StorageNotFound when a local folder is missing; an S3 prefix may be empty)."""
        ...

    def acquire_lease(self, lease: Lease, *, force: bool = False) -> Lease | None:
        """Make `lease` the folder's lease (its generation set by `Lease.successor`):
        created atomically when there is none, or replacing one that `may_take_over` allows
        (the same token renews it). Returns the other holder's lease it replaced (None for
        none, a renewal or a released one); raises `LeaseHeld` naming the holder. Never
        fenced: the lease file is how fencing is decided."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Mark the folder's lease released if it is still `lease` (a writer that took over
        keeps its own); the file stays, so the next holder's generation follows it."""
        ...

    def read_lease(self) -> tuple[Lease | None, float | None]:
        """(the folder's lease, its age in seconds on the storage's own clock); (None,
        None) when there is none, (None, age) when the file is not a lease."""
        ...
