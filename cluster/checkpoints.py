"""Which of a run's checkpoints are complete, read from its storage (local or S3) without Ray.

Ray Train V2 already gives the guarantee resume relies on: every rank uploads its files
into a fresh `checkpoint_<timestamp>` folder, and only once all ranks have reported does the
controller register it and rewrite `checkpoint_manager_snapshot.json` (one PUT, so it is
whole or absent); resume restores the snapshot's latest checkpoint. An upload cut off
halfway leaves an unregistered folder that nothing reads and that never replaces a good one.

On top of that, `CheckpointManifest` (cluster/manifest_callback.py) writes `COMPLETE.json`
into each registered checkpoint, listing every file and its size: readers that do not
parse Ray's internal snapshot (`distill export`, `distill runs list`) check the files
against it. A checkpoint counts as complete when its manifest matches its files, or when
Ray's snapshot lists it (the window between Ray's registration and our manifest).
"""

from __future__ import annotations

import json

from distill.cluster.run_files import TRAIN_DIR
from distill.cluster.storage import Storage

COMPLETE = "COMPLETE.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def manifest_problem(manifest: dict, files: dict[str, int]) -> str | None:
    """Why `files` ({relpath: size}) do not match the manifest, or None when they do."""
    for rel, size in manifest.get("files", {}).items():
        if rel not in files:
            return f"{rel} missing"
        if files[rel] != size:
            return f"{rel} has {files[rel]} bytes, expected {size}"
    return None


def _ray_registered(storage: Storage, folder: str) -> list[str]:
    try:
        snapshot = json.loads(storage.read_text(f"{folder}/{RAY_SNAPSHOT}"))
    except (FileNotFoundError, OSError, ValueError):
        return []
    results = snapshot.get("checkpoint_results") if isinstance(snapshot, dict) else None
    return [
        r.get("checkpoint_dir_name")
        for r in (results if isinstance(results, list) else [])
        if isinstance(r, dict) and r.get("checkpoint_dir_name")
    ]


def complete_checkpoints(storage: Storage, folder: str = TRAIN_DIR) -> list[dict]:
    """The complete checkpoints of the run's Ray Train run (`train`: every stage of a
    pipeline reports there), newest first: [{"name", "path", "step"}], `path` relative to the run folder."""
    names = [n for n in storage.list(folder) if n.startswith("checkpoint_")]
    registered = set(_ray_registered(storage, folder))
    found = []
    for name in names:
        rel = f"{folder}/{name}"
        files = storage.list_files(rel)
        step = None
        if COMPLETE in files:
            try:
                manifest = json.loads(storage.read_text(f"{rel}/{COMPLETE}"))
            except (FileNotFoundError, ValueError):
                manifest = None
            damaged = not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict)
            if damaged or manifest_problem(manifest, files):
                continue
            step = manifest.get("step")
        elif name not in registered:
            continue  # an upload that never finished (or whose run died before registering it)
        found.append({"name": name, "path": rel, "step": step})
    # Names are `checkpoint_<YYYY-mm-dd_HH-MM-SS.ffffff>`: sorting them sorts by time.
    return sorted(found, key=lambda c: c["name"], reverse=True)
