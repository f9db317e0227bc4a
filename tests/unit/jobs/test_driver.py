"""The one driver lifecycle of `distill run` and `distill tune` (`jobs/driver.py`): after the
checks, `on_checked`, then the lease, then the folder's config, then the launch, in that
order; a held lease or a folder that cannot be made is one line before anything is written
or launched. Real local storage and real leases, no Ray."""

from __future__ import annotations

import json

import pytest
from helpers.storage_checks import lease_free

from distill.cluster.storage import open_storage
from distill.cluster.storage_protocol import LEASE_FILE
from distill.core.spec import SpecError
from distill.jobs.driver import Folder, drive, write_folder_config


def _folder(path, what="run") -> Folder:
    return Folder(open_storage(path), "--output", "config.yaml", "a: 1\n", what)


def test_steps_run_in_order_with_the_lease_held_while_launching(tmp_path):
    run = tmp_path / "run"
    seen = []

    def launch():
        lease = json.loads((run / LEASE_FILE).read_text())  # held while the job runs
        seen.append(("launch", (run / "config.yaml").read_text(), bool(lease["token"])))
        return {"done": True}

    report = drive(
        _folder(run),
        launch,
        on_checked=lambda: seen.append(("checked", run.exists())),
    )
    assert report == {"done": True}
    assert seen == [("checked", False), ("launch", "a: 1\n", True)]
    assert lease_free(open_storage(run))  # released at the end


def test_a_second_writer_is_refused_before_its_config_or_launch(tmp_path):
    run = tmp_path / "run"
    launched = []

    def second():
        with pytest.raises(SpecError, match=r"^--output: .*lease") as err:
            drive(_folder(run), lambda: launched.append("second"))
        return str(err.value)

    line = drive(_folder(run), second)
    assert "\n" not in line and launched == []


def test_without_the_lease_a_sweep_trial_still_writes_its_config_first(tmp_path):
    run = tmp_path / "trial"
    got = drive(_folder(run), lambda: {"config": (run / "config.yaml").read_text()}, lease=False)
    assert got == {"config": "a: 1\n"} and not (run / LEASE_FILE).exists()


def test_a_folder_that_cannot_be_made_is_one_line_naming_the_field(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecError) as err:
        write_folder_config(_folder(blocker / "sweep", "sweep"))
    assert str(err.value).startswith(
        f"--output {blocker / 'sweep'}: cannot create the sweep folder"
    )
