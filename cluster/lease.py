"""One writer per run folder: the driver of a run (or of a sweep, for the whole sweep
folder) holds the folder's lease while it runs.

`hold_lease(storage)` takes the lease through the storage (`Storage.acquire_lease`: an
O_EXCL file on local disk, a conditional PUT on S3), renews it from a daemon thread every
`ttl_s / 4` seconds and releases it when the block ends, however it ends. A driver that
crashes stops renewing, so its lease expires after at most `ttl_s` seconds (on local disk
at once, when its process is gone) and never blocks the folder for good. A second writer
gets `LeaseHeld`, which names the holder; `force=True` takes over a valid lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from distill.cluster.storage import Lease, LeaseHeld, Storage
from distill.cluster.storage_protocol import HELD_HERE, left_by_this_process

LEASE_TTL_S = 120.0


def new_lease(ttl_s: float = LEASE_TTL_S) -> Lease:
    """A lease for this process, valid for `ttl_s` seconds from now."""
    now = time.time()
    return Lease(
        token=uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        expires=now + ttl_s,
    )


@contextlib.contextmanager
def hold_lease(
    storage: Storage, *, force: bool = False, ttl_s: float = LEASE_TTL_S
) -> Iterator[Lease]:
    """Hold the folder's lease for the block (renewed in the background, released at the
    end). Raises `LeaseHeld` before the block when another writer holds it; prints one line
    when it takes over another writer's lease (expired, its process gone, or `force`)."""
    lease = new_lease(ttl_s)
    replaced = storage.acquire_lease(lease, force=force)
    HELD_HERE.add(lease.token)
    if replaced is not None:
        if replaced.expired():
            why = "expired"
        elif left_by_this_process(replaced):
            why = "left by an earlier run of this process that could not release it"
        else:
            why = "--force" if force else "its process is gone"
        print(
            f"distill: took over the lease of {storage.uri} from {replaced.describe()} ({why})",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(storage, lease, ttl_s, stop), name="distill-lease", daemon=True
    )
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        try:
            storage.release_lease(lease)
        except Exception as exc:  # it expires by itself; this process may take it over
            print(
                f"distill: warning: could not release the lease of {storage.uri}: {exc}",
                file=sys.stderr,
            )
        finally:
            HELD_HERE.discard(lease.token)


def _renew(storage: Storage, lease: Lease, ttl_s: float, stop: threading.Event) -> None:
    """Push the lease's expiry forward every ttl_s / 4 until `stop`; a failed renewal (an
    outage) is retried at the next tick, a lease another writer took is given up."""
    while not stop.wait(ttl_s / 4):
        try:
            storage.acquire_lease(dataclasses.replace(lease, expires=time.time() + ttl_s))
        except LeaseHeld as exc:
            print(
                f"distill: warning: lost the lease of {storage.uri} to {exc.holder.describe()}; "
                "another writer now owns this folder",
                file=sys.stderr,
                flush=True,
            )
            return
        except Exception:  # a storage hiccup: the lease lasts ttl_s, try at the next tick
            continue
