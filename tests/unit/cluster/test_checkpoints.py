"""Checkpoints verify themselves: `COMPLETE.json` records every file's size and sha256
(written through pyarrow, as the Ray Train callback writes it), and `newest_intact` passes
over a checkpoint with a truncated, missing or altered file, naming it in one line."""

from __future__ import annotations

import json

import pytest
from helpers.checkpoint_folders import NEWER, OLDER, SHARD, make_checkpoint, two_checkpoint_run

from distill.cluster.checkpoints import COMPLETE, RAY_SNAPSHOT, complete_checkpoints, newest_intact
from distill.cluster.local_storage import LocalStorage


@pytest.fixture
def run(tmp_path) -> LocalStorage:
    return two_checkpoint_run(tmp_path / "runs" / "r1")


def test_the_manifest_lists_every_file_with_size_and_sha256(run):
    manifest = json.loads(run.read_text(f"train/{NEWER}/{COMPLETE}"))
    assert manifest["version"] == 2 and manifest["step"] == 8 and manifest["ranks"] == 2
    assert sorted(manifest["files"]) == [SHARD, "train_state.json"]
    shard = manifest["files"][SHARD]
    assert shard["size"] == 256 * 18 and len(shard["sha256"]) == 64
    assert not any(p.name.endswith(".tmp") for p in run.path(f"train/{NEWER}").iterdir())


def test_an_intact_newest_checkpoint_is_chosen_without_a_notice(run):
    choice = newest_intact(run)
    assert choice.intact == {"name": NEWER, "path": f"train/{NEWER}", "step": 8}
    assert choice.damaged == [] and choice.notice("resuming from", none_left="-") is None


def test_a_truncated_file_falls_back_to_the_older_checkpoint(run):
    shard = run.path(f"train/{NEWER}/{SHARD}")
    shard.write_bytes(shard.read_bytes()[:1234])
    choice = newest_intact(run)
    assert choice.intact["name"] == OLDER and choice.intact["step"] == 4
    assert choice.notice("resuming from", none_left="starting from step 0") == (
        f"distill: checkpoint train/{NEWER} is damaged ({SHARD}: 1234 bytes, expected 4608); "
        f"resuming from train/{OLDER} (step 4)"
    )
    assert [c["name"] for c in complete_checkpoints(run)] == [OLDER]


def test_a_missing_file_falls_back(run):
    run.delete(f"train/{NEWER}/train_state.json")
    choice = newest_intact(run)
    assert choice.intact["name"] == OLDER
    assert choice.damaged[0][1] == "train_state.json: missing"


def test_a_file_with_the_right_size_but_wrong_bytes_fails_its_checksum(run):
    shard = run.path(f"train/{NEWER}/{SHARD}")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # one flipped byte: same size
    shard.write_bytes(bytes(data))
    assert [c["name"] for c in complete_checkpoints(run)] == [NEWER, OLDER]  # sizes only
    choice = newest_intact(run)
    assert choice.intact["name"] == OLDER
    assert choice.damaged[0][1] == f"{SHARD}: sha256 differs from the manifest"


def test_no_intact_checkpoint_left_says_so(run):
    run.delete(f"train/{NEWER}/{SHARD}")
    run.write_text(f"train/{OLDER}/{COMPLETE}", '{"files": ')  # cut-off manifest
    choice = newest_intact(run)
    assert choice.intact is None and len(choice.damaged) == 2
    assert choice.notice("resuming from", none_left="starting from step 0") == (
        f"distill: checkpoint train/{NEWER} is damaged ({SHARD}: missing); "
        "1 older damaged checkpoint(s) skipped too; "
        "no intact checkpoint left: starting from step 0"
    )
    assert choice.damaged[1][1] == f"{COMPLETE}: unreadable"


def test_partial_uploads_are_ignored_and_registered_unmanifested_checkpoints_fall_back(run):
    # Newest: an upload cut off before Ray registered it (no manifest, not in the snapshot).
    partial = "checkpoint_2026-11-30_10-10-00.000000"
    make_checkpoint(run, partial, 12, manifest=False)
    assert newest_intact(run).intact["name"] == NEWER and newest_intact(run).damaged == []
    # Registered by Ray, but no manifest (the run stopped before the callback wrote it, or
    # the upload was damaged): never verified, so passed over with one line.
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": partial}]}
    run.write_text(f"train/{RAY_SNAPSHOT}", json.dumps(snapshot))
    choice = newest_intact(run)
    assert choice.intact["name"] == NEWER
    assert choice.notice("resuming from", none_left="-") == (
        f"distill: checkpoint train/{partial} is damaged ({COMPLETE} missing (never verified "
        f"after its upload)); resuming from train/{NEWER} (step 8)"
    )
    assert [c["name"] for c in complete_checkpoints(run)] == [NEWER, OLDER]


def _sent_and_uploaded(tmp_path, damage: bool):
    """A rank's checkpoint folder hashed before its upload, then 'uploaded' (copied) into the
    run, with one byte flipped on the way when `damage`; (filesystem, stored root)."""
    import shutil

    import pyarrow.fs

    from distill.cluster.checkpoints import build_manifest, write_sent

    local = tmp_path / "rank0"
    (local / "engine").mkdir(parents=True)
    (local / "engine" / "shard.pt").write_bytes(bytes(range(256)) * 64)
    (local / "train_state.json").write_text('{"step": 4}')
    write_sent(str(local), 0)
    stored = tmp_path / "run" / "train" / "checkpoint_x"
    shutil.copytree(local, stored)
    if damage:
        shard = stored / "engine" / "shard.pt"
        data = bytearray(shard.read_bytes())
        data[7] ^= 0xFF
        shard.write_bytes(bytes(data))
    fs = pyarrow.fs.LocalFileSystem()
    return fs, str(stored), build_manifest(fs, str(stored), step=4, ranks=1)


def test_a_file_damaged_in_the_upload_is_caught_against_what_the_rank_sent(tmp_path):
    from distill.cluster.checkpoints import SENT_DIR, transit_problem

    fs, root, manifest = _sent_and_uploaded(tmp_path, damage=False)
    assert f"{SENT_DIR}/rank_0.json" in manifest["files"]
    assert transit_problem(fs, root, manifest) is None
    fs, root, manifest = _sent_and_uploaded(tmp_path / "again", damage=True)
    assert transit_problem(fs, root, manifest) == (
        "engine/shard.pt: changed in the upload (sha256 differs from what was sent)"
    )


def test_the_manifest_callback_leaves_a_damaged_upload_without_a_manifest(tmp_path, capsys):
    from types import SimpleNamespace

    from distill.cluster.manifest_callback import CheckpointManifest

    fs, root, _ = _sent_and_uploaded(tmp_path, damage=True)
    checkpoint = SimpleNamespace(filesystem=fs, path=root)
    CheckpointManifest().after_report(None, [{"step": 4}], checkpoint)
    assert not (tmp_path / "run" / "train" / "checkpoint_x" / COMPLETE).exists()
    line = capsys.readouterr().err.strip()
    assert line.startswith("distill: checkpoint checkpoint_x (step 4) was damaged in its upload")
    fs, root, _ = _sent_and_uploaded(tmp_path / "good", damage=False)
    CheckpointManifest().after_report(
        None, [{"step": 4}], SimpleNamespace(filesystem=fs, path=root)
    )
    assert (tmp_path / "good" / "run" / "train" / "checkpoint_x" / COMPLETE).exists()


def test_sizes_only_manifests_of_older_runs_still_verify(run):
    manifest = json.loads(run.read_text(f"train/{NEWER}/{COMPLETE}"))
    v1 = {"step": 8, "files": {rel: f["size"] for rel, f in manifest["files"].items()}}
    run.write_text(f"train/{NEWER}/{COMPLETE}", json.dumps(v1))
    assert newest_intact(run).intact["name"] == NEWER
    run.put(f"train/{NEWER}/{SHARD}", b"short")
    assert newest_intact(run).damaged[0][1] == f"{SHARD}: 5 bytes, expected 4608"


def test_a_registered_checkpoint_whose_folder_is_gone_is_damaged(run):
    gone = "checkpoint_2026-11-30_10-10-00.000000"
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": n} for n in (OLDER, NEWER, gone)]}
    run.write_text(f"train/{RAY_SNAPSHOT}", json.dumps(snapshot))
    choice = newest_intact(run)
    assert choice.intact["name"] == NEWER
    assert choice.damaged == [
        ({"name": gone, "path": f"train/{gone}", "step": None}, "folder missing")
    ]
