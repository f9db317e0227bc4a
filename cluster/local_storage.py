"""A run folder on local (or shared network) disk: the `Storage` protocol over the file
system, and the embedded default. Files are written to a temporary name and renamed into
place; `put_dir` renames a complete copy into place, so a folder that exists is complete.

The run folder's lease (`.lease.json`) is created with `O_CREAT | O_EXCL`, so of two
writers only one creates it; replacing, renewing and removing it happen under an exclusive
`flock` of `.lease.lock` next to it, so two writers never both take over a stale lease. A
holder on this host whose process is gone has lost its lease, even before it expires.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from distill.cluster.storage_protocol import (
    LEASE_FILE,
    Lease,
    LeaseHeld,
    StorageError,
    StorageNotFound,
    check_fenced,
    may_take_over,
    replaced,
)

_LEASE_LOCK = ".lease.lock"


class LocalStorage:
    """A run folder on local (or shared network) disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def uri(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    def child(self, relpath: str) -> LocalStorage:
        return LocalStorage(self.root / relpath)

    def ray_storage(self) -> tuple[str, None]:
        """(storage_path, storage_filesystem) for `ray.train.RunConfig`."""
        return str(self.root), None

    def path(self, relpath: str) -> Path:
        """The local path of `relpath` (for code that only ever runs on local disk)."""
        return self.root / relpath

    def exists(self, relpath: str) -> bool:
        return self.path(relpath).exists()

    def get(self, relpath: str) -> bytes:
        try:
            return self.path(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StorageNotFound(f"{self.path(relpath)}: no such file") from None

    def _fenced(self, relpath: str) -> None:
        """Before any write: `LeaseLost` if `relpath` lies in a folder this process writes
        under a lease it no longer holds (storage_protocol.check_fenced)."""
        check_fenced(f"{self.uri}/{relpath}".rstrip("/"))

    def put(self, relpath: str, data: bytes) -> None:
        self._fenced(relpath)
        self._write_atomic(relpath, data)

    def _write_atomic(self, relpath: str, data: bytes) -> None:
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)

    def read_text(self, relpath: str) -> str:
        return self.get(relpath).decode()

    def write_text(self, relpath: str, text: str) -> None:
        self.put(relpath, text.encode())

    def append_text(self, relpath: str, text: str) -> None:
        self._fenced(relpath)
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def put_dir(self, local_dir: str | Path, relpath: str) -> None:
        """Copy a folder in, replacing any previous one only once the copy is complete."""
        self._fenced(relpath)
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new."))
        shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def dir_complete(self, relpath: str) -> bool:
        return self.path(relpath).is_dir()  # `put_dir` renames a complete copy into place

    def get_dir(self, relpath: str, local_dir: str | Path) -> Path:
        source = self.path(relpath)
        if not source.is_dir():
            raise StorageNotFound(f"{source}: no such folder")
        shutil.copytree(source, local_dir, dirs_exist_ok=True)
        return Path(local_dir)

    def list(self, relpath: str = "") -> list[str]:
        folder = self.path(relpath)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def list_files(self, relpath: str = "") -> dict[str, int]:
        folder = self.path(relpath)
        return {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    def delete(self, relpath: str) -> None:
        self._fenced(relpath)
        target = self.path(relpath)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def probe(self) -> None:
        """Nothing to check up front: the run folder is created (or refused) on first write."""

    def check_readable(self) -> None:
        """The root must be a folder: StorageNotFound when nothing is there, StorageError
        when it is a file."""
        if not self.root.exists():
            raise StorageNotFound(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise StorageError(f"{self.root}: is a file, not a folder")

    # -- lease ----------------------------------------------------------------------------
    def acquire_lease(self, lease: Lease, *, force: bool = False) -> Lease | None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(LEASE_FILE)
        with self._lease_lock():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                held, age = self.read_lease()
                if not (may_take_over(held, lease, force=force, age_s=age) or _holder_gone(held)):
                    raise LeaseHeld(self.uri, held) from None
                written = held.successor(lease) if held is not None else lease
                self._write_atomic(LEASE_FILE, written.to_json().encode())
                return replaced(held, lease)
            with os.fdopen(fd, "w") as f:
                f.write(replace(lease, generation=1).to_json())
            return None

    def release_lease(self, lease: Lease) -> None:
        if not self.root.is_dir():
            return
        with self._lease_lock():
            held, _ = self.read_lease()
            if held is not None and held.token == lease.token and not held.released:
                self._write_atomic(LEASE_FILE, replace(held, released=True).to_json().encode())

    def read_lease(self) -> tuple[Lease | None, float | None]:
        """The lease and its age: now minus the file's mtime, both read on this host."""
        path = self.path(LEASE_FILE)
        try:
            data, mtime = path.read_bytes(), path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        return Lease.from_json(data), max(0.0, time.time() - mtime)

    @contextlib.contextmanager
    def _lease_lock(self):
        fd = os.open(self.path(_LEASE_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def _holder_gone(held: Lease | None) -> bool:
    """The lease's process ran on this host and no longer exists."""
    if held is None or held.host != socket.gethostname():
        return False
    try:
        os.kill(held.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
