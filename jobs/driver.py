"""One driver lifecycle, shared by `distill run` (`jobs/run.py`) and `distill tune`
(`jobs/tune.py`):

    prepare  every check, nothing written, no Ray (the command's own `prepare_*`)
    lease    the folder's lease, held to the end (`take_lease`)
    folder   the folder's config file, the first write (`write_folder_config`)
    cluster  Ray, then the teacher-output cache the job reads (`start_cluster`) or the
             teacher's Ray Serve deployment (`start_service`, stopped by `stop_service`)
    launch   Ray Train (a run) or Ray Tune (a sweep) (the command's `launch`)
    report   written last: its presence means the job is done (the command's `launch`)

`drive` runs the steps after `prepare` in that order. A bad input is a `SpecError` raised by
`prepare`, before the lease, the first write and Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from distill.core.spec import JobSpec, SpecError
from distill.jobs.preflight import take_lease


@dataclass(frozen=True)
class Folder:
    """Where a prepared job writes: its storage, the field that named it (`--output`,
    `output.dir`, `base.output.dir`) and the config file written first."""

    storage: object  # distill.cluster.storage.Storage
    field: str
    config_file: str
    config_text: str
    what: str = "run"  # "run" | "sweep", for the one line when the folder cannot be made
    lease_ttl_s: float = 120.0  # `output.lease_ttl_s`


def drive(
    folder: Folder,
    launch: Callable[[], dict],
    *,
    lease: bool = True,
    force: bool = False,
    on_checked: Callable[[], None] | None = None,
) -> dict:
    """Every step after `prepare`: `on_checked` (every check passed), the lease (unless the
    caller's sweep holds it: `lease=False`; `force` takes another writer's over), the config
    file, then `launch()`, which starts the cluster, trains and writes the report."""
    if on_checked is not None:
        on_checked()
    with contextlib.ExitStack() as held:
        if lease:
            take_lease(
                held, folder.storage, force=force, field=folder.field, ttl_s=folder.lease_ttl_s
            )
        write_folder_config(folder)
        return launch()


def write_folder_config(folder: Folder) -> None:
    """The folder's first write; a folder that cannot be created is one line."""
    try:
        folder.storage.write_text(folder.config_file, folder.config_text)
    except OSError as exc:
        raise SpecError(
            f"{folder.field} {folder.storage.uri}: cannot create the {folder.what} folder "
            f"({exc.strerror})"
        ) from None


def start_cluster(spec: JobSpec, cache_request=None) -> dict | None:
    """Ray (joined or started locally, as `spec` says), then the teacher-output cache
    `cache_request` asks for (`distill.cluster.cache_store.resolve_cache`), found or built
    with Ray Data; None without a request. Ray is imported here: after every check."""
    from distill.cluster.cache_store import build_cache
    from distill.cluster.launch import ensure_ray

    ensure_ray(spec)
    return build_cache(cache_request) if cache_request is not None else None


def start_service(spec: JobSpec):
    """Ray, then the teacher's Ray Serve deployment (`teacher.placement: service`): started
    for this run or sweep, or attached to by `teacher.service.name`. Its `ServiceRef`."""
    from distill.cluster.launch import ensure_ray
    from distill.cluster.teacher_service import start_or_attach

    ensure_ray(spec)
    return start_or_attach(spec)


def stop_service(ref) -> None:
    """Delete the deployment `start_service` started (one attached to is left running)."""
    if ref is not None:
        from distill.cluster.teacher_service import stop

        stop(ref)
