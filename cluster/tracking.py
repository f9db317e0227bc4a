"""Experiment trackers beside `metrics.jsonl` and TensorBoard: MLflow and Weights & Biases,
through Ray's own integrations.

- `distill run`: rank 0 opens one tracker run per stage with Ray Train's `setup_mlflow` /
  `setup_wandb` (the spec, flattened, as its parameters) and logs every logged step's
  scalars under the same tags as TensorBoard (`train/loss`, `eval/quality`, `perf/...`).
- `distill tune`: Tune's `MLflowLoggerCallback` / `WandbLoggerCallback` on the Tuner log one
  tracker run per trial (its sampled config and every result it reports); the trials' own
  workers then log nothing, so no step is logged twice.

`resolve_tracking` runs on the driver before Ray starts: a tracker whose package is missing,
an online W&B run without credentials, or an MLflow store that cannot be derived is one line
naming the field. Credentials stay in the trackers' own environment variables
(MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD, WANDB_API_KEY), never in the spec, the run's
config.yaml or a log line.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path

from distill.core.spec import JobSpec, SpecError, TrackingSpec

MLFLOW_DB = "mlflow.db"  # a local run's or sweep's MLflow store (SQLite), when none is given
WANDB_DIR = "wandb"  # W&B's own files (offline runs) in a local run or sweep folder


def _need(package: str, field: str) -> None:
    if importlib.util.find_spec(package) is None:
        install = "mlflow-skinny" if package == "mlflow" else package
        raise SpecError(f"{field}: needs the {package} package (pip install {install})")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    try:
        return netrc.netrc().authenticators(host.split("/")[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_tracking(tracking: TrackingSpec, name: str, local_dir: Path | None) -> TrackingSpec:
    """`tracking` with its defaults filled in on the driver (the workers and config.yaml get
    the result): MLflow's store (MLFLOW_TRACKING_URI, else an SQLite `mlflow.db` in the
    local run or sweep folder) and experiment (the output name). SpecError (one line) for
    what cannot work."""
    updates = {}
    if tracking.mlflow is not None:
        _need("mlflow", "tracking.mlflow")
        uri = tracking.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            if local_dir is None:
                raise SpecError(
                    "tracking.mlflow.tracking_uri: required with an s3:// output "
                    "(or set MLFLOW_TRACKING_URI)"
                )
            uri = f"sqlite:///{local_dir / MLFLOW_DB}"
        updates["mlflow"] = tracking.mlflow.model_copy(
            update={"tracking_uri": uri, "experiment": tracking.mlflow.experiment or name}
        )
    if tracking.wandb is not None:
        _need("wandb", "tracking.wandb")
        if tracking.wandb.mode == "offline" and local_dir is None:
            raise SpecError("tracking.wandb.mode: offline writes files; it needs a local output")
        if tracking.wandb.mode == "online" and not _wandb_logged_in():
            raise SpecError(
                "tracking.wandb: no W&B credentials (set WANDB_API_KEY or run `wandb login`), "
                "or use tracking.wandb.mode: offline"
            )
    return tracking.model_copy(update=updates)


def local_root(storage) -> Path | None:
    """The folder of a run or sweep on local disk (None for S3)."""
    from distill.cluster.local_storage import LocalStorage

    return storage.root if isinstance(storage, LocalStorage) else None


def with_tracking(spec: JobSpec, storage) -> JobSpec:
    """`spec` with `resolve_tracking` applied for a run or sweep stored in `storage`."""
    t = spec.tracking
    if t.mlflow is None and t.wandb is None:
        return spec
    resolved = resolve_tracking(t, spec.output.name, local_root(storage))
    return spec.model_copy(update={"tracking": resolved})


def _wandb_mode_env(mode: str) -> None:
    """Ray's W&B integrations ask for an API key unless WANDB_MODE says offline."""
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"


def wandb_dir(local_dir: Path) -> str:
    """Where W&B is pointed: it writes its runs under `<this>/wandb/`."""
    local_dir.mkdir(parents=True, exist_ok=True)
    return str(local_dir)


def flat_params(spec: JobSpec) -> dict[str, str | int | float | bool]:
    """The spec as `section.field` parameters (None and empty values left out)."""
    out: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif node is not None and node != []:
            out[prefix.rstrip(".")] = node if isinstance(node, (int, float, bool)) else str(node)

    walk(spec.model_dump(mode="json", exclude={"tracking"}), "")
    return out


class Trackers:
    """Rank 0's open tracker runs of one stage (empty when the spec enables none)."""

    def __init__(self, spec: JobSpec, run_name: str, local_dir: Path | None) -> None:
        self._mlflow = self._wandb = None
        t, params = spec.tracking, flat_params(spec)
        if t.mlflow is not None:
            from ray.air.integrations.mlflow import setup_mlflow

            self._mlflow = setup_mlflow(
                config=params,
                tracking_uri=t.mlflow.tracking_uri,
                experiment_name=t.mlflow.experiment,
                run_name=run_name,
                create_experiment_if_not_exists=True,
                rank_zero_only=False,  # this is rank 0 already
            )
        if t.wandb is not None:
            from ray.air.integrations.wandb import setup_wandb

            _wandb_mode_env(t.wandb.mode)
            self._wandb = setup_wandb(
                config=params,
                rank_zero_only=False,
                project=t.wandb.project,
                entity=t.wandb.entity,
                group=t.wandb.group,
                name=run_name,
                mode=t.wandb.mode,
                dir=wandb_dir(local_dir) if local_dir is not None else None,
            )

    def log(self, tags: dict[str, float], step: int) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics(tags, step=step)
        if self._wandb is not None:
            self._wandb.log(tags, step=step)

    def close(self, ok: bool) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run(status="FINISHED" if ok else "FAILED")
            self._mlflow = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if ok else 1)
            self._wandb = None


def tune_callbacks(tracking: TrackingSpec, local_dir: Path | None) -> list:
    """Tune's logger callbacks for a sweep whose base spec enables trackers."""
    callbacks = []
    if tracking.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=tracking.mlflow.tracking_uri,
                experiment_name=tracking.mlflow.experiment,
                save_artifact=False,
            )
        )
    if tracking.wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        w = tracking.wandb
        _wandb_mode_env(w.mode)
        callbacks.append(
            WandbLoggerCallback(
                project=w.project,
                group=w.group,
                entity=w.entity,
                mode=w.mode,
                dir=wandb_dir(local_dir) if local_dir is not None else None,
            )
        )
    return callbacks
