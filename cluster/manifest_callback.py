"""A Ray Train callback, run on the controller after all workers reported, that writes the
`COMPLETE.json` manifest (every file's size and sha256) into each registered checkpoint
(see cluster/checkpoints.py). The files are read once, where they are, through the
checkpoint's own pyarrow filesystem (local disk or S3), and compared with the hashes each
rank took before uploading them: a checkpoint damaged in the upload gets no manifest, so
no reader takes it for a good one, and one line says so."""

from __future__ import annotations

import sys

import ray.train

from distill.cluster.checkpoints import build_manifest, transit_problem, write_manifest


class CheckpointManifest(ray.train.UserCallback):
    """Lists the checkpoint's files, sizes and checksums, written last into the checkpoint folder."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None:
            return
        fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
        step = (metrics[0] if metrics else {}).get("step")
        manifest = build_manifest(fs, root, step=step, ranks=len(metrics))
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
        write_manifest(fs, root, manifest)
