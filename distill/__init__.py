"""distill: distributed knowledge distillation on Ray Train + DeepSpeed ZeRO.

The Python API for notebooks and scripts (the `distill` CLI calls the same functions)::

    import distill

    spec = distill.load_spec("examples/minilm.yaml", overrides=["training.steps=50"])
    report = distill.run(spec, output="runs/minilm")         # train, export, evaluate
    distill.report("runs/minilm")                             # the report again (a dict)
    distill.export("runs/minilm", "./student")                # the student as an HF folder
    sweep = distill.load_sweep("examples/sweep_depth_width.yaml")
    distill.tune(sweep, output="runs/sweep")                  # a Ray Tune sweep

Subpackages, one per layer; each imports only the ones below it:
`distill.jobs` (CLI, runner, reports) -> `distill.cluster` (Ray, DeepSpeed, storage) ->
`distill.core` (PyTorch + transformers, the spec types; never imports Ray).
Attributes load on first use, so `import distill.core` never pulls in Ray.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distill")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_API = {
    "load_spec": "distill.jobs.api",
    "load_sweep": "distill.jobs.api",
    "run": "distill.jobs.api",
    "tune": "distill.jobs.api",
    "report": "distill.jobs.api",
    "export": "distill.jobs.api",
    "JobSpec": "distill.core.spec",
    "SweepSpec": "distill.cluster.sweep_spec",
    "SpecError": "distill.core.spec",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
