"""A Ray Train callback, run on the controller after all workers reported, that writes the
`COMPLETE.json` manifest (every file's size and sha256) into each registered checkpoint
(see cluster/checkpoints.py). The files are read once, where they are, through the
checkpoint's own pyarrow filesystem (local disk or S3)."""

from __future__ import annotations

import ray.train

from distill.cluster.checkpoints import build_manifest, write_manifest


class CheckpointManifest(ray.train.UserCallback):
    """Lists the checkpoint's files, sizes and checksums, written last into the checkpoint folder."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None:
            return
        fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
        step = (metrics[0] if metrics else {}).get("step")
        write_manifest(fs, root, build_manifest(fs, root, step=step, ranks=len(metrics)))
