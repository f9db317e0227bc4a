"""Where a run's files live. `LocalStorage` is the embedded default; an S3 backend
implements the same methods (and gives Ray a pyarrow filesystem) without touching callers.

Writes are atomic: a file or folder appears complete or not at all, and replacing a folder
never leaves a moment with neither the old nor the new one complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class LocalStorage:
    """A run folder on local (or shared network) disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def uri(self) -> str:
        return str(self.root)

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
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
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
