"""Which of a run's checkpoints are complete and intact, read from its storage (local or S3)
without Ray.

Ray Train V2 already gives the guarantee resume relies on: every rank uploads its files
into a fresh `checkpoint_<timestamp>` folder, and only once all ranks have reported does the
controller register it and rewrite `checkpoint_manager_snapshot.json` (one PUT, so it is
whole or absent); resume restores the snapshot's latest checkpoint. An upload cut off
halfway leaves an unregistered folder that nothing reads and that never replaces a good one.

On top of that, every rank hashes the files it is about to upload (`write_sent`:
`.sent/rank_<r>.json`, uploaded with them), and `CheckpointManifest`
(cluster/manifest_callback.py) writes `COMPLETE.json` into each registered checkpoint
(`build_manifest`: every file with its size and sha256, read back from where it was stored)
only when those stored hashes equal the hashes the ranks sent (`transit_problem`): a file
damaged during the upload itself leaves its checkpoint without a manifest. A checkpoint is
*complete* when its files have the manifest's sizes, and *intact* when their checksums
match too; one without `COMPLETE.json` never is (Ray may have registered it, but its
manifest was never written: the run stopped in between, or the upload was damaged), and is
passed over with one line like a damaged one.
`newest_intact` checks the newest checkpoints until one is intact, so resume, `distill
export` and `distill runs list` never take a damaged checkpoint (a truncated, missing or
altered file) for a good one.

    COMPLETE.json = {"version": 2, "step": 8, "ranks": 2, "generation": 3,
                     "files": {"engine/mp_rank_00_model_states.pt": {"size": 5678, "sha256": "..."}, ...}}

`generation` is the fencing generation of the run folder's lease the checkpoint was written
under (cluster/lease.py; absent without a lease). Readers rank checkpoints by generation,
then time: a checkpoint finished by a writer that had already lost the folder to another
never outranks the other writer's.

(Version 1 manifests, written before checksums, list sizes only: `{"files": {path: size}}`.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow.fs

from distill.cluster.run_files import TRAIN_DIR
from distill.cluster.storage import Storage

COMPLETE = "COMPLETE.json"
SENT_DIR = ".sent"  # per rank: the files it uploaded, hashed before the upload
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
MANIFEST_VERSION = 2
_STAGING = f".{COMPLETE}.tmp"  # the manifest before it is moved into place
_CHUNK = 8 << 20  # bytes read at a time while hashing


# -- writing (on the Ray Train controller, through Ray's pyarrow filesystem) -----------------


def file_sha256(fs: pyarrow.fs.FileSystem, path: str) -> str:
    """sha256 of one file, streamed (read once, never whole in memory)."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_sent(folder: str, rank: int) -> None:
    """Before a rank uploads its checkpoint folder: `.sent/rank_<rank>.json`, every file in
    `folder` with its size and sha256, read from the local disk it was just written to."""
    import os

    fs, files = pyarrow.fs.LocalFileSystem(), {}
    for base, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder)
            if not rel.startswith(SENT_DIR + os.sep):
                files[rel] = {"size": os.path.getsize(path), "sha256": file_sha256(fs, path)}
    os.makedirs(os.path.join(folder, SENT_DIR), exist_ok=True)
    with open(os.path.join(folder, SENT_DIR, f"rank_{rank}.json"), "w") as f:
        json.dump(files, f)


def transit_problem(fs: pyarrow.fs.FileSystem, root: str, manifest: dict) -> str | None:
    """Which file the ranks sent (`.sent/rank_*.json`) is missing or different in the stored
    checkpoint `root` whose files `manifest` lists (as `build_manifest` read them); None
    when every file arrived as sent (or no rank recorded what it sent: older runs)."""
    stored = manifest["files"]
    for rel in sorted(r for r in stored if r.startswith(SENT_DIR + "/")):
        with fs.open_input_stream(f"{root}/{rel}") as f:
            sent = json.loads(f.read().decode())
        for name, entry in sorted(sent.items()):
            if name not in stored:
                return f"{name}: sent by {rel.rsplit('/', 1)[-1][:-5]}, missing after the upload"
            if stored[name]["sha256"] != entry["sha256"]:
                return f"{name}: changed in the upload (sha256 differs from what was sent)"
    return None


def build_manifest(fs: pyarrow.fs.FileSystem, root: str, *, step, ranks: int) -> dict:
    """The manifest of the checkpoint folder `root` on `fs`: every file's size and sha256."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files = {}
    for info in sorted(infos, key=lambda i: i.path):
        rel = info.path[len(root) + 1 :]
        if info.type == pyarrow.fs.FileType.File and rel not in (COMPLETE, _STAGING):
            files[rel] = {"size": info.size, "sha256": file_sha256(fs, info.path)}
    return {"version": MANIFEST_VERSION, "step": step, "ranks": ranks, "files": files}


def write_manifest(fs: pyarrow.fs.FileSystem, root: str, manifest: dict) -> None:
    """Write `COMPLETE.json` into `root` under a temporary name, then move it into place:
    readers see the whole manifest or none."""
    with fs.open_output_stream(f"{root}/{_STAGING}") as f:
        f.write(json.dumps(manifest, indent=1).encode())
    fs.move(f"{root}/{_STAGING}", f"{root}/{COMPLETE}")


# -- reading ---------------------------------------------------------------------------------


def manifest_problem(manifest: dict, files: dict[str, int]) -> str | None:
    """Why `files` ({relpath: size}) do not have the manifest's files and sizes, or None."""
    for rel, entry in manifest.get("files", {}).items():
        size = entry["size"] if isinstance(entry, dict) else entry  # version 1: sizes only
        if rel not in files:
            return f"{rel}: missing"
        if files[rel] != size:
            return f"{rel}: {files[rel]} bytes, expected {size}"
    return None


def checksum_problem(storage: Storage, path: str, manifest: dict) -> str | None:
    """Which file under `path` (a checkpoint, relative to the storage) does not have the
    manifest's sha256, or None. Reads every file once, where it is (S3: streamed)."""
    root, fs = storage.ray_storage()
    fs = fs or pyarrow.fs.LocalFileSystem()
    for rel, entry in manifest.get("files", {}).items():
        if isinstance(entry, dict) and "sha256" in entry:
            try:
                digest = file_sha256(fs, f"{root}/{path}/{rel}")
            except FileNotFoundError:  # deleted since the listing (other errors propagate)
                return f"{rel}: missing"
            if digest != entry["sha256"]:
                return f"{rel}: sha256 differs from the manifest"
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


def _checkpoints(storage: Storage, folder: str) -> list[dict]:
    """Every checkpoint of `folder` that Ray finished (it has a manifest, or Ray's snapshot
    lists it), newest first: {"name", "path", "step", "manifest", "problem"}, where
    `problem` says why its files do not match the manifest's sizes, or that it has no
    manifest (None: they match)."""
    registered = set(_ray_registered(storage, folder))
    listed = [n for n in storage.list(folder) if n.startswith("checkpoint_")]
    found = [  # registered by Ray, yet gone: Ray would restore it and fail
        {
            "name": n,
            "path": f"{folder}/{n}",
            "step": None,
            "manifest": None,
            "problem": "folder missing",
        }
        for n in registered - set(listed)
    ]
    for name in listed:
        path = f"{folder}/{name}"
        files = storage.list_files(path)
        manifest, problem = None, None
        if COMPLETE in files:
            try:
                manifest = json.loads(storage.read_text(f"{path}/{COMPLETE}"))
                problem = manifest_problem(manifest, files)
            except (FileNotFoundError, ValueError, TypeError, KeyError, AttributeError):
                manifest, problem = None, f"{COMPLETE}: unreadable"
        elif name not in registered:
            continue  # an upload that never finished (or whose run died before registering it)
        else:  # registered, yet no manifest: stopped before it, or damaged in the upload
            problem = f"{COMPLETE} missing (never verified after its upload)"
        step = manifest.get("step") if manifest else None
        found.append(
            {"name": name, "path": path, "step": step, "manifest": manifest, "problem": problem}
        )
    return sorted(found, key=_recency(found), reverse=True)


def _recency(found: list[dict]):
    """Sort key, newest first: the lease generation that wrote the checkpoint, then time
    (names are `checkpoint_<YYYY-mm-dd_HH-MM-SS.ffffff>`). A checkpoint a fenced-out writer
    finished after another writer took the folder over ranks below every checkpoint of the
    writer that took over. Without a manifest the generation is unknown: ranked with the
    newest generation, so the line about it is not lost."""
    known = [c["manifest"].get("generation", 0) for c in found if c["manifest"]]
    newest = max(known, default=0)

    def key(c: dict) -> tuple[int, str]:
        manifest = c["manifest"]
        return (manifest.get("generation", 0) if manifest else newest, c["name"])

    return key


def _public(checkpoint: dict) -> dict:
    return {k: checkpoint[k] for k in ("name", "path", "step")}


def complete_checkpoints(storage: Storage, folder: str = TRAIN_DIR) -> list[dict]:
    """The complete checkpoints of the run's Ray Train run (`train`: every stage of a
    pipeline reports there), newest first: [{"name", "path", "step"}], `path` relative to
    the run folder. Checks sizes only (cheap, for polling); `newest_intact` also checks sums."""
    return [_public(c) for c in _checkpoints(storage, folder) if c["problem"] is None]


@dataclass
class CheckpointChoice:
    """The newest intact checkpoint (`intact`, None when there is none) and the newer
    damaged ones passed over on the way: [(checkpoint, which file is wrong and how)]."""

    intact: dict | None
    damaged: list[tuple[dict, str]] = field(default_factory=list)

    def notice(self, using: str, *, none_left: str, where: str = "") -> str | None:
        """One line naming the newest damaged checkpoint's bad file and what is used
        instead (`using`: "resuming from", "exporting from", ...; `none_left`: what happens
        when no checkpoint is intact); None when nothing was damaged. `where` prefixes the
        paths (e.g. the run's name when several runs are listed)."""
        if not self.damaged:
            return None
        (first, problem), more = self.damaged[0], len(self.damaged) - 1
        older = f"; {more} older damaged checkpoint(s) skipped too" if more else ""
        if self.intact is None:
            instead = f"no intact checkpoint left: {none_left}"
        else:
            step = f" (step {self.intact['step']})" if self.intact.get("step") is not None else ""
            instead = f"{using} {where}{self.intact['path']}{step}"
        return (
            f"distill: checkpoint {where}{first['path']} is damaged ({problem}){older}; {instead}"
        )


def newest_intact(storage: Storage, folder: str = TRAIN_DIR) -> CheckpointChoice:
    """Verify the run's checkpoints newest first (sizes, then checksums) until one is intact."""
    choice = CheckpointChoice(intact=None)
    for checkpoint in _checkpoints(storage, folder):
        problem = checkpoint["problem"]
        if problem is None and checkpoint["manifest"] is not None:
            problem = checksum_problem(storage, checkpoint["path"], checkpoint["manifest"])
        if problem is None:
            choice.intact = _public(checkpoint)
            return choice
        choice.damaged.append((_public(checkpoint), problem))
    return choice
