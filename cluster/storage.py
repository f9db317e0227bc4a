"""Where a run's files live. `LocalStorage` is the embedded default; `S3Storage`
(cluster/s3_storage.py) implements the same methods (and gives Ray a pyarrow filesystem)
without touching callers. `open_storage(uri, s3)` picks one from the URI.

Writes are atomic: a file or folder appears complete or not at all, and replacing a folder
never leaves a moment with neither the old nor the new one complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class StorageError(ValueError):
    """The storage location is malformed, missing or unreachable; one line, no secrets."""


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
        return self.root / relpath

    def exists(self, relpath: str) -> bool:
        return self.path(relpath).exists()

    def read_text(self, relpath: str) -> str:
        return self.path(relpath).read_text()

    def write_text(self, relpath: str, text: str) -> None:
        self.write_bytes(relpath, text.encode())

    def write_bytes(self, relpath: str, data: bytes) -> None:
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)

    def put_dir(self, local_dir: str | Path, relpath: str) -> None:
        """Copy a folder in, replacing any previous one only once the copy is complete."""
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
        shutil.copytree(self.path(relpath), local_dir, dirs_exist_ok=True)
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
        target = self.path(relpath)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def probe(self) -> None:
        """Nothing to check up front: the run folder is created (or refused) on first write."""

    def check_readable(self) -> None:
        """Nothing to check: a missing folder reads as empty."""


def is_s3_uri(uri: str | Path) -> bool:
    return str(uri).startswith("s3:")


def open_storage(uri: str | Path, s3=None):
    """`LocalStorage` for a path, `S3Storage` for `s3://bucket/prefix` (`s3`: the spec's
    `output.s3` connection settings). Raises `StorageError` for a malformed URI."""
    if not is_s3_uri(uri):
        return LocalStorage(uri)
    from distill.cluster.s3_storage import S3Options, S3Storage  # boto3 only when needed

    return S3Storage(str(uri), S3Options.from_spec(s3))
