"""One writer per run folder: the driver of a run (or of a sweep, for the whole sweep
folder) holds the folder's lease while it runs, and every process writing for it writes
under a fence.

`hold_lease(storage)` takes the lease through the storage (`Storage.acquire_lease`: an
O_EXCL file on local disk, a conditional PUT on S3), renews it from a daemon thread every
`ttl_s / 4` seconds and releases it when the block ends, however it ends. A driver that
crashes stops renewing, so its lease expires `ttl_s` seconds after its last renewal, as the
storage's own clock measures it (on local disk at once, when its process is gone) and never
blocks the folder for good. A second writer gets `LeaseHeld`, which names the holder;
`force=True` takes over a valid lease.

Fencing. Each lease has a generation one above the lease it replaced. While the block runs,
every write this process makes under the folder checks first that the lease is still its
own (`storage_protocol.check_fenced`), and the processes that write for it (Ray Train
workers, the Train controller's checkpoint callback, Tune trials) get a `FenceRef` and do
the same (`enter_fence`). A writer that finds the lease gone raises `LeaseLost`; the driver's
renewal thread, when it finds the lease taken, prints the one line and ends the driver at
once (exit 1), which ends the Ray actors it owns, so a paused or partitioned writer stops
instead of interleaving with the writer that took over.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from distill.cluster.storage import Lease, LeaseHeld, LeaseLost, Storage, open_storage
from distill.cluster.storage_protocol import (
    HELD_HERE,
    Fence,
    fence_covering,
    fence_writes,
    left_by_this_process,
    unfence,
)

LEASE_TTL_S = 120.0


def new_lease(ttl_s: float = LEASE_TTL_S) -> Lease:
    """A lease for this process, valid for `ttl_s` seconds after each renewal."""
    now = time.time()
    return Lease(
        token=uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        expires=now + ttl_s,
        ttl_s=ttl_s,
    )


@dataclass(frozen=True)
class FenceRef:
    """A fence another process can enter (`enter_fence`): the leased folder's URI and the
    holder's token and generation. Holds no secret: the S3 settings come from the spec."""

    uri: str
    token: str
    generation: int


def stop_writer(exc: LeaseLost) -> None:
    """What a process does when it finds its lease taken: one line (one write, so no other
    thread's output lands inside it), then exit 1 at once (no cleanup that could write into
    the folder the other writer now owns)."""
    sys.stderr.flush()
    os.write(2, f"distill: error: {exc}\n".encode())
    os._exit(1)


def stop_driver(exc: LeaseLost) -> None:
    """`stop_writer` for the driver: first disconnect from Ray (a local Ray it started
    stops, with the workers still training for it; on a cluster, the actors it owns end),
    which also flushes Ray's buffered worker logs, so the error stays the last line. At
    most 10 s: a hung shutdown does not keep the stale writer alive."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        done = threading.Thread(target=ray.shutdown, name="distill-fenced-out", daemon=True)
        done.start()
        done.join(timeout=10)
    stop_writer(exc)


@contextlib.contextmanager
def hold_lease(
    storage: Storage,
    *,
    force: bool = False,
    ttl_s: float = LEASE_TTL_S,
    on_lost: Callable[[LeaseLost], None] = stop_driver,
) -> Iterator[FenceRef]:
    """Hold the folder's lease for the block (renewed in the background, released at the
    end), every write under the folder fenced by it; yields the `FenceRef` to hand to the
    processes that write for this one. Raises `LeaseHeld` before the block when another
    writer holds it; prints one line when it takes over another writer's lease (expired,
    its process gone, or `force`). When a renewal finds the lease taken, `on_lost` is
    called (by default `stop_driver`: Ray disconnected, one line, exit 1)."""
    lease = new_lease(ttl_s)
    replaced = storage.acquire_lease(lease, force=force)
    held, _ = storage.read_lease()
    generation = held.generation if held is not None and held.token == lease.token else 0
    HELD_HERE.add(lease.token)
    fence_writes(Fence(storage, lease.token, generation))
    if replaced is not None:
        if force and not replaced.expired():
            why = "--force"
        elif left_by_this_process(replaced):
            why = "left by an earlier run of this process that could not release it"
        else:
            why = "expired, or its process is gone"
        print(
            f"distill: took over the lease of {storage.uri} from {replaced.describe()} ({why})",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew,
        args=(storage, lease, ttl_s, stop, on_lost),
        name="distill-lease",
        daemon=True,
    )
    renewer.start()
    try:
        yield FenceRef(storage.uri, lease.token, generation)
    finally:
        stop.set()
        renewer.join()
        unfence(storage.uri)
        try:
            storage.release_lease(lease)
        except Exception as exc:  # it expires by itself; this process may take it over
            print(
                f"distill: warning: could not release the lease of {storage.uri}: {exc}",
                file=sys.stderr,
            )
        finally:
            HELD_HERE.discard(lease.token)


def _renew(
    storage: Storage,
    lease: Lease,
    ttl_s: float,
    stop: threading.Event,
    on_lost: Callable[[LeaseLost], None],
) -> None:
    """Push the lease's expiry forward every ttl_s / 4 until `stop`; a failed renewal (an
    outage) is retried at the next tick, a lease another writer took calls `on_lost`."""
    while not stop.wait(ttl_s / 4):
        try:
            storage.acquire_lease(dataclasses.replace(lease, expires=time.time() + ttl_s))
        except LeaseHeld as exc:
            if not stop.is_set():
                on_lost(LeaseLost(storage.uri, exc.holder))
            return
        except Exception:  # a storage hiccup: the lease lasts ttl_s, try at the next tick
            continue


def fence_of(uri: str) -> FenceRef | None:
    """The `FenceRef` of the leased folder `uri` lies in, in this process (the run's own
    lease, or the sweep's a trial entered); None when no lease covers it."""
    fence = fence_covering(uri)
    return None if fence is None else FenceRef(fence.root.uri, fence.token, fence.generation)


def enter_fence(ref: FenceRef | None, s3=None) -> None:
    """In a process that writes for a lease holder (a Train worker, the Train controller, a
    Tune trial): fence every write under `ref.uri` by the holder's lease (`s3`: the spec's
    `output.s3`, to read the lease); `LeaseLost` at once when it is already gone. Nothing
    without a ref (a job without a lease)."""
    if ref is not None:
        fence = Fence(open_storage(ref.uri, s3), ref.token, ref.generation)
        fence.check()  # a process started after the lease was lost writes nothing
        fence_writes(fence)


def check_fence(ref: FenceRef | None, s3=None) -> None:
    """`LeaseLost` unless the lease `ref` names is still its holder's (one read)."""
    if ref is not None:
        Fence(open_storage(ref.uri, s3), ref.token, ref.generation).check()


def stop_if_fenced_out(ref: FenceRef | None, s3=None) -> None:
    """`check_fence`, and on `LeaseLost` `stop_writer`: for the processes that write
    through Ray's own filesystem rather than a `Storage` (the Train controller)."""
    try:
        check_fence(ref, s3)
    except LeaseLost as exc:
        stop_writer(exc)
