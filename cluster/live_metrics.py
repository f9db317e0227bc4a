"""Metrics a user can watch while a run trains: rank 0 appends every logged step to the
run's `metrics.jsonl` (flushed at once) and to TensorBoard event files under
`tensorboard/`, so `tail -f RUN/metrics.jsonl` and `tensorboard --logdir RUN/tensorboard`
follow the run (or a sweep: `--logdir SWEEP`, one subfolder per trial). With `tracking`
in the spec, the same scalars go to MLflow / W&B (`distill.cluster.tracking`).

Event files are written by tensorboardX into a local scratch folder and copied into the
run's storage after every logged step (local disk or S3 alike). A resumed run rewrites
`metrics.jsonl` from its checkpoint's history and starts a new event file whose
`purge_step` makes TensorBoard drop the old file's steps after the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from distill.cluster.storage import Storage
from distill.cluster.tracking import Trackers

TENSORBOARD_DIR = "tensorboard"


def scalar_tags(metrics: dict) -> dict[str, float]:
    """The numeric metrics of one logged step under TensorBoard tags grouped by kind:
    `train/` (loss, its parts, learning rate), `eval/`, `perf/` (samples/s, ms per phase),
    `memory/`; non-numeric fields (stage, placement group) are left out."""
    tags = {}
    for key, value in metrics.items():
        if key in ("step", "epoch") or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if key.startswith("eval_"):
            tag = f"eval/{key.removeprefix('eval_')}"
        elif key == "samples_per_s" or key.startswith(("ms_", "stage_switch")):
            tag = f"perf/{key}"
        elif key.endswith("_mb"):
            tag = f"memory/{key}"
        else:
            tag = f"train/{key}"
        tags[tag] = float(value)
    return tags


class LiveMetrics:
    """Rank 0's writer of `metrics_file` and the TensorBoard events of one stage."""

    def __init__(
        self,
        storage: Storage,
        metrics_file: str,
        tensorboard_dir: str,
        history: list[dict],
        trackers: Trackers | None = None,
    ) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.storage, self.metrics_file = storage, metrics_file
        self.tensorboard_dir, self.trackers = tensorboard_dir, trackers
        # The checkpoint's history is what survives a resume: later lines are dropped.
        storage.write_text(metrics_file, "".join(json.dumps(h) + "\n" for h in history))
        self._scratch = tempfile.TemporaryDirectory(prefix="distill-tb-")
        # tensorboardX's synchronous writer (its SummaryWriter queues events to a thread,
        # and its flush does not wait for them).
        self.events = EventsWriter(f"{self._scratch.name}/events", f".{os.getpid()}")
        # TensorBoard drops earlier files' events from this step on (a resume's redone steps).
        purge = (history[-1]["step"] if history else 0) + 1
        self.events.write_event(
            Event(
                step=purge, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)
            )
        )
        self._publish()

    def log(self, metrics: dict) -> None:
        """Append one logged step to metrics.jsonl and TensorBoard, both readable at once."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self.storage.append_text(self.metrics_file, json.dumps(metrics) + "\n")
        tags = scalar_tags(metrics)
        for tag, value in tags.items():
            self.events.write_event(
                Event(step=metrics["step"], wall_time=time.time(), summary=scalar(tag, value))
            )
        self._publish()
        if self.trackers is not None:
            self.trackers.log(tags, metrics["step"])

    def _publish(self) -> None:
        self.events.flush()
        for file in Path(self._scratch.name).iterdir():
            self.storage.put(f"{self.tensorboard_dir}/{file.name}", file.read_bytes())

    def close(self, ok: bool = True) -> None:
        """Close the event file and end the tracker runs (FAILED when the stage raised)."""
        self.events.close()
        self._scratch.cleanup()
        if self.trackers is not None:
            self.trackers.close(ok)
