"""A Ray Train callback, run on the controller after all workers reported, that writes the
`COMPLETE.json` manifest into each registered checkpoint (see cluster/checkpoints.py)."""

from __future__ import annotations

import json

import pyarrow.fs
import ray.train

from distill.cluster.checkpoints import COMPLETE


class CheckpointManifest(ray.train.UserCallback):
    """Lists the checkpoint's files and sizes, written last into the checkpoint folder."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None:
            return
        fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
        files = {
            info.path[len(root) + 1 :]: info.size
            for info in infos
            if info.type == pyarrow.fs.FileType.File
        }
        files.pop(COMPLETE, None)
        manifest = {
            "step": (metrics[0] if metrics else {}).get("step"),
            "ranks": len(metrics),
            "files": dict(sorted(files.items())),
        }
        with fs.open_output_stream(f"{root}/{COMPLETE}") as f:
            f.write(json.dumps(manifest, indent=1).encode())
