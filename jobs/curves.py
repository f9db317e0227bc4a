"""`curves.png`: a run's training curves from its `metrics.jsonl`, drawn next to
`report.json` by `distill report RUN` (and at the end of `distill run`).

Four panels against the step: the loss and its parts, the eval loss (and eval quality on
a second axis), the learning rate, and samples/s. Drawn with matplotlib's Agg canvas
directly (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import io
import json

from distill.cluster.pipeline import METRICS_FILE
from distill.cluster.storage import Storage

CURVES_FILE = "curves.png"


def read_history(storage: Storage) -> list[dict]:
    """The logged steps of a run's metrics.jsonl ([] when there is none); a torn last line
    (the run is still writing) is skipped."""
    if not storage.exists(METRICS_FILE):
        return []
    rows = []
    for line in storage.read_text(METRICS_FILE).splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(history: list[dict], title: str = "") -> bytes:
    """The PNG bytes of the four panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), dpi=100)
    FigureCanvasAgg(figure)
    (loss, evals), (lr, speed) = figure.subplots(2, 2)
    parts = sorted({k for h in history for k in h if k.startswith("loss_")})
    for key in ["loss", *parts]:
        steps, values = _series(history, key)
        if steps:
            loss.plot(steps, values, label=key, linewidth=2 if key == "loss" else 1)
    loss.set_title("training loss (mean of ranks) and its parts")
    if parts:
        loss.legend(fontsize=8)
    steps, values = _series(history, "eval_loss")
    evals.plot(steps, values, marker="o", color="tab:red", label="eval loss")
    evals.set_title("eval loss")
    q_steps, quality = _series(history, "eval_quality")
    if q_steps:
        twin = evals.twinx()
        twin.plot(q_steps, quality, marker="s", color="tab:green", label="eval quality")
        twin.set_ylabel("eval quality", color="tab:green")
        evals.set_title("eval loss (red) and eval quality (green)")
    lr.plot(*_series(history, "lr"), color="tab:purple")
    lr.set_title("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    speed.plot(*_series(history, "samples_per_s"), color="tab:orange")
    speed.set_title("samples/s (all workers)")
    for axis in (loss, evals, lr, speed):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def write_curves(storage: Storage, title: str = "") -> str | None:
    """Draw the run's curves into `curves.png` in its folder; its location, or None when
    the run has logged no step yet."""
    history = read_history(storage)
    if not history:
        return None
    storage.put(CURVES_FILE, draw_curves(history, title or storage.name))
    return f"{storage.uri.rstrip('/')}/{CURVES_FILE}"
