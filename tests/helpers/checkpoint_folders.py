"""Fake checkpoint folders as Ray Train leaves them (engine shard + train state), with the
`COMPLETE.json` manifest written the way the Ray Train callback writes it (through pyarrow)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs

from distill.cluster.checkpoints import build_manifest, write_manifest
from distill.cluster.storage import LocalStorage, Storage

OLDER = "checkpoint_2026-11-30_10-00-00.000000"
NEWER = "checkpoint_2026-11-30_10-05-00.000000"
SHARD = "engine/mp_rank_00_model_states.pt"


def make_checkpoint(run: Storage, name: str, step: int, *, manifest: bool = True) -> str:
    """A checkpoint folder `train/<name>` whose shard has 256 * (10 + step) bytes."""
    path = f"train/{name}"
    run.put(f"{path}/{SHARD}", bytes(range(256)) * (10 + step))
    run.write_text(f"{path}/train_state.json", json.dumps({"step": step, "history": []}))
    if manifest:
        root, fs = run.ray_storage()
        fs, root = fs or pyarrow.fs.LocalFileSystem(), f"{root}/{path}"
        write_manifest(fs, root, build_manifest(fs, root, step=step, ranks=2))
    return path


def two_checkpoint_run(root: str | Path | Storage) -> Storage:
    """A run folder (a local path, or a storage) with two checkpoints, OLDER at step 4 and
    NEWER at step 8."""
    run = root if isinstance(root, Storage) else LocalStorage(root)
    run.write_text("config.yaml", "student: {layers: 2}\n")
    make_checkpoint(run, OLDER, 4)
    make_checkpoint(run, NEWER, 8)
    return run
