"""Where a run's files live: `open_storage(uri, s3)` opens a local path as `LocalStorage`
(cluster/local_storage.py) and `s3://bucket/prefix` as `S3Storage` (cluster/s3_storage.py).
Both implement the `Storage` protocol (cluster/storage_protocol.py), which callers are typed
against; this module is where they import it from.
"""

from __future__ import annotations

from pathlib import Path

from distill.cluster.local_storage import LocalStorage
from distill.cluster.storage_protocol import (
    Lease,
    LeaseHeld,
    LeaseLost,
    Storage,
    StorageError,
    StorageNotFound,
    is_s3_uri,
)

__all__ = [
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LocalStorage",
    "Storage",
    "StorageError",
    "StorageNotFound",
    "is_s3_uri",
    "open_storage",
]


def open_storage(uri: str | Path, s3=None) -> Storage:
    """`LocalStorage` for a path, `S3Storage` for `s3://bucket/prefix` (`s3`: the spec's
    `output.s3` connection settings). Raises `StorageError` for a malformed URI."""
    if not is_s3_uri(uri):
        return LocalStorage(uri)
    from distill.cluster.s3_storage import S3Options, S3Storage  # boto3 only when needed

    return S3Storage(str(uri), S3Options.from_spec(s3))
