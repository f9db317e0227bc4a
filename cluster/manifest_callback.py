"""Ray Train callbacks run on the controller, which writes into the run folder through
Ray's own pyarrow filesystem:

- `ControllerFence`, first in the list: after every report and every worker failure it
  checks that the run folder's lease is still the driver's (cluster/lease.py); when it is
  not, the controller stops at once (one line, exit 1), ending the workers it owns, before
  any later callback writes. A worker that found the lease gone fails, and this is what
  keeps Ray from starting a new worker group for it.
- `CheckpointManifest` writes the `COMPLETE.json` manifest (every file's size and sha256)
  into each registered checkpoint (see cluster/checkpoints.py). The files are read once,
  where they are, through the checkpoint's own pyarrow filesystem (local disk or S3), and
  compared with the hashes each rank took before uploading them: a checkpoint damaged in
  the upload gets no manifest, so no reader takes it for a good one, and one line says so.
  The manifest records the lease generation, and the lease is checked again just before
  it is written (hashing takes a while)."""

from __future__ import annotations

import sys

import ray.train

from distill.cluster.checkpoints import build_manifest, transit_problem, write_manifest
from distill.cluster.lease import FenceRef, stop_if_fenced_out


class ControllerFence(ray.train.UserCallback):
    """Stops the controller once the lease `fence` (read with the spec's `s3` settings) is
    no longer the driver's."""

    def __init__(self, fence: FenceRef | None = None, s3=None) -> None:
        self.fence, self.s3 = fence, s3

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        stop_if_fenced_out(self.fence, self.s3)

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        stop_if_fenced_out(self.fence, self.s3)  # a worker fenced out: stop, no retry


class CheckpointManifest(ray.train.UserCallback):
    """Lists the checkpoint's files, sizes and checksums, written last into the checkpoint
    folder while the lease `fence` is the driver's."""

    def __init__(self, fence: FenceRef | None = None, s3=None) -> None:
        self.fence, self.s3 = fence, s3

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None:
            return
        fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
        step = (metrics[0] if metrics else {}).get("step")
        manifest = build_manifest(fs, root, step=step, ranks=len(metrics))
        if self.fence is not None:
            manifest["generation"] = self.fence.generation
        problem = transit_problem(fs, root, manifest)
        if problem is not None:
            name = root.rsplit("/", 1)[-1]
            print(
                f"distill: checkpoint {name} (step {step}) was damaged in its upload "
                f"({problem}); it is not marked complete, and resuming skips it",
                file=sys.stderr,
                flush=True,
            )
            return
        stop_if_fenced_out(self.fence, self.s3)
        write_manifest(fs, root, manifest)
