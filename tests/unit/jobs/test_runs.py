"""`distill runs list` and `distill export` on a run folder whose newest checkpoint is
damaged: they use the newest intact one (or refuse), naming the damaged file in one line."""

from __future__ import annotations

import pytest
from helpers.checkpoint_folders import NEWER, OLDER, SHARD, two_checkpoint_run

from distill.core.spec import SpecError
from distill.jobs.runs import export_run, list_runs


@pytest.fixture
def run(tmp_path):
    return two_checkpoint_run(tmp_path / "runs" / "r1")


def test_runs_list_shows_the_older_checkpoint_and_names_the_damaged_file(run, capsys):
    run.put(f"train/{NEWER}/{SHARD}", b"short")
    (row,) = list_runs(str(run.root.parent))
    assert row["status"] == "stopped (checkpoint)" and row["steps"] == 4
    assert row["damaged"] == f"train/{NEWER}: {SHARD}: 5 bytes, expected 4608"
    err = capsys.readouterr().err.strip()
    assert err == (
        f"distill: checkpoint r1/train/{NEWER} is damaged ({SHARD}: 5 bytes, expected 4608); "
        f"showing r1/train/{OLDER} (step 4)"
    )


def test_export_refuses_when_every_checkpoint_is_damaged_naming_the_file(run, tmp_path):
    for name in (NEWER, OLDER):
        run.put(f"train/{name}/{SHARD}", b"short")
    with pytest.raises(SpecError, match=rf"no intact checkpoint \(train/{NEWER} is damaged: "):
        export_run(str(run.root), tmp_path / "out")
