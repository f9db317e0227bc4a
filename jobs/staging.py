"""What a submitted job carries to the cluster, staged in a local temporary folder before
upload: the `working_dir` (the job's config or sweep under `job/`, every *relative* local
file or folder it names copied under `job/files/` with the paths rewritten, and the marker
a node finds its copy by), this machine's `distill` package for `--code local`, and the
`runtime_env` that names them, with the workers' environment and `--env`/`--pip`. Absolute
paths are kept: they must exist at the same path on every node (a shared filesystem).
Nothing secret goes in: Ray stores the `runtime_env` with the job and shows it to anyone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
from pathlib import Path

from distill.cluster.worker_env import BUNDLED_DIR, JOB_MARKER, SUBMITTED_JOB_ENV
from distill.core.spec import SpecError, map_spec_paths
from distill.core.spec_loading import SECRET_KEY

BUNDLE_LIMIT_BYTES = 100 * 2**20  # Ray caps a working_dir package at a few hundred MiB
JOB_DIR = "job"
# The installed namespace shipped as one package: its API folder, then each subpackage
# (in this checkout the layer folders jobs/, cluster/ and distill_core/).
CODE_PACKAGE = "distill"
CODE_SUBPACKAGES = ("jobs", "cluster", "core")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def new_working_dir(root: Path) -> Path:
    """`root/working_dir`, holding an empty `job/` folder and the marker by which each node
    finds its copy (`distill.cluster.worker_env.job_working_dir`)."""
    working_dir = root / "working_dir"
    (working_dir / JOB_DIR).mkdir(parents=True)
    (working_dir / JOB_MARKER).write_text("")
    return working_dir


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bundle_local_paths(raw: dict, working_dir: Path, base: Path) -> dict:
    """Copy every relative local file or folder a raw spec names (its `PATH_FIELDS`,
    relative to `base`) into the working dir's `job/files/`; returns the spec pointing at
    the copies, relative to the working dir. Absolute and `~` paths, and names with nothing
    on disk (hub models and datasets), are left as they are."""
    files_dir = working_dir / BUNDLED_DIR
    staged: dict[str, str] = {}  # the config's path -> the bundled copy
    total = 0

    def bundle(value: str, field: str) -> str:
        nonlocal total
        if os.path.isabs(value) or value.startswith("~"):
            return value
        local = (base / value).resolve()
        if not local.exists():
            return value  # a hub name (teacher or dataset); preflight checked the rest
        if value not in staged:
            total += _size(local)
            if total > BUNDLE_LIMIT_BYTES:
                raise SpecError(
                    f"{field.rsplit('.', 1)[-1]}: local files named by the config exceed "
                    f"{BUNDLE_LIMIT_BYTES // 2**20} MiB; put {value} on storage every node "
                    "mounts and give its absolute path"
                )
            target = files_dir / f"{len(staged)}_{local.name}"
            if local.is_dir():
                shutil.copytree(local, target, ignore=_SKIP)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, target)
            staged[value] = f"{BUNDLED_DIR}{target.name}"
        return staged[value]

    return map_spec_paths(raw, bundle)


def stage_code(root: Path) -> Path:
    """This machine's `distill` package, as installed, copied to `root/distill` as one
    importable package (the API's `__init__.py` plus `jobs`, `cluster` and `core`, wherever
    each subpackage lives: an editable install maps them to the layer folders)."""
    package = Path(importlib.import_module(CODE_PACKAGE).__file__).parent
    staged = root / CODE_PACKAGE
    shutil.copytree(package, staged, ignore=_SKIP)
    for name in CODE_SUBPACKAGES:
        source = Path(importlib.import_module(f"{CODE_PACKAGE}.{name}").__file__).parent
        if source != package / name:  # a regular install copied it with the package above
            shutil.copytree(source, staged / name, ignore=_SKIP)
    return staged


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` pairs as a dict; a key that looks like a secret is a SpecError."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--env {pair.split('=')[0]!r}: expected KEY=VALUE")
        if SECRET_KEY.search(key) or key.startswith(("RAY_AUTH", "AWS_SECRET", "AWS_SESSION")):
            # runtime_env is stored with the job and shown by the dashboard to anyone.
            raise SpecError(
                f"--env {key}: looks like a secret; give it to the cluster's nodes "
                "(a Kubernetes Secret, an instance profile), never to the job"
            )
        env[key] = value
    return env


def runtime_env(working_dir: Path, worker_env: dict[str, str], args: argparse.Namespace) -> dict:
    """The Ray `runtime_env` of a submitted job (no secrets: Ray stores and shows it).
    `args` carries `--env`, `--pip` and `--code`; `--code local` stages the `distill`
    package next to the working dir (`working_dir/../code/distill`) as the one py_module."""
    env = {**worker_env, SUBMITTED_JOB_ENV: "1", **parse_env(args.env)}
    renv: dict = {"working_dir": str(working_dir), "env_vars": env}
    if args.code == "local":
        renv["py_modules"] = [str(stage_code(working_dir.parent / "code"))]
    if args.pip:
        renv["pip"] = list(args.pip)
    return renv
