"""`sweep_report.json`, `pareto.png` and the chosen student of a `distill tune` sweep.

Every trial is listed with its values, metrics, status (`completed`, `stopped` early by the
scheduler, or `error`) and checkpoint; the finished ones form the Pareto fronts of quality
vs speedup and quality vs size. `distill report SWEEP_DIR` prints `format_sweep_table`.
"""

from __future__ import annotations

import io
import json
import tempfile

from distill.cluster.storage import Storage
from distill.cluster.sweep_spec import trial_params
from distill.jobs.pareto import choose, pareto_front
from distill.jobs.report import format_number
from distill.jobs.run_folder import SWEEP_REPORT_FILE

PARETO_PNG = "pareto.png"
CHOSEN_DIR = "student"
SCHEMA_VERSION = 1
_FINAL = ("quality", "retention", "speedup", "params")


def trial_rows(results, saved_status: dict[str, str] | None = None) -> list[dict]:
    """One row per Tune trial from a `ResultGrid`, in trial-id order. Status: `completed`,
    `stopped` (early, by the scheduler), `error`, or `interrupted` (Tune's saved state has it
    unfinished: running the sweep again resumes it)."""
    rows = []
    for result in results:
        m = dict(result.metrics or {})
        status = "error" if result.error else ("completed" if "quality" in m else "stopped")
        saved = (saved_status or {}).get(m.get("trial_id"))
        if status == "stopped" and saved in ("RUNNING", "PENDING", "PAUSED"):
            status = "interrupted"
        rows.append(
            {
                "trial_id": m.get("trial_id") or (result.path or "").rstrip("/").rsplit("/", 1)[-1],
                "status": status,
                "params": trial_params(result.config or {}),
                "metrics": {
                    k: m[k]
                    for k in (*_FINAL, "eval_quality", "eval_loss", "step", "time_total_s")
                    if k in m and m[k] is not None
                },
                "run_dir": m.get("run_dir"),
                "checkpoint": m.get("checkpoint") or m.get("checkpoint_path"),
                "error": str(result.error).strip().splitlines()[-1][:300] if result.error else None,
                "_teacher": (
                    m.get("teacher_quality"),
                    m.get("teacher_params"),
                    m.get("quality_metric"),
                ),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


def build_sweep_report(rows: list[dict], sweep: dict, *, max_params=None, min_speedup=None) -> dict:
    """The report: trials, both Pareto fronts over the completed ones, and the choice."""
    done = [r for r in rows if r["status"] == "completed"]
    points = [r["metrics"] for r in done]
    front = [done[i]["trial_id"] for i in pareto_front(points, ["quality", "speedup"])]
    front_size = [done[i]["trial_id"] for i in pareto_front(points, ["quality", "params"])]
    chosen, choice_error = None, None
    try:
        index, rule = choose(points, max_params=max_params, min_speedup=min_speedup)
        chosen = {"trial_id": done[index]["trial_id"], "rule": rule, "student": None}
    except ValueError as exc:  # nothing finished, or nothing within the limits
        choice_error = str(exc)
    teacher = next((r["_teacher"] for r in done), (None, None, None))
    for r in rows:
        r.pop("_teacher", None)
        r["pareto"] = r["trial_id"] in front
        r["pareto_size"] = r["trial_id"] in front_size
    return {
        "schema_version": SCHEMA_VERSION,
        "sweep": sweep,
        "teacher": {"quality": teacher[0], "parameters": teacher[1], "speedup": 1.0},
        "quality_metric": teacher[2],
        "counts": {
            s: sum(r["status"] == s for r in rows)
            for s in ("completed", "stopped", "error", "interrupted")
        },
        "pareto": {"quality_vs_speedup": front, "quality_vs_params": front_size},
        "chosen": chosen,
        "choice_error": choice_error,
        "trials": rows,
    }


def pareto_png(report: dict) -> bytes:
    """Quality vs speedup for every finished trial (marker size ~ parameters), the front
    joined and highlighted, the chosen student ringed, the teacher marked at speedup 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report["trials"] if r["status"] == "completed"]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    largest = max([r["metrics"]["params"] for r in done] + [report["teacher"]["parameters"] or 1])

    def size(params: float) -> float:
        return 30 + 250 * params / largest

    others = [r for r in done if not r["pareto"]]
    ax.scatter(
        [r["metrics"]["speedup"] for r in others],
        [r["metrics"]["quality"] for r in others],
        s=[size(r["metrics"]["params"]) for r in others],
        c="lightgray",
        edgecolors="gray",
        label="trial",
    )
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["metrics"]["speedup"])
    ax.plot(
        [r["metrics"]["speedup"] for r in front],
        [r["metrics"]["quality"] for r in front],
        "-o",
        color="tab:blue",
        label="Pareto front",
    )
    for r in done:
        ax.annotate(
            _label(r["params"]),
            (r["metrics"]["speedup"], r["metrics"]["quality"]),
            fontsize=6,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if report["chosen"]:
        pick = next(r for r in done if r["trial_id"] == report["chosen"]["trial_id"])
        ax.scatter(
            [pick["metrics"]["speedup"]],
            [pick["metrics"]["quality"]],
            s=260,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label=f"chosen ({report['chosen']['rule']})",
        )
    t = report["teacher"]
    if t["quality"] is not None:
        ax.scatter(
            [1.0], [t["quality"]], marker="*", s=250, c="gold", edgecolors="black", label="teacher"
        )
    ax.set_xlabel("encode speedup vs teacher (same machine)")
    ax.set_ylabel(report.get("quality_metric") or "quality")
    ax.set_title("distill tune: quality vs speed (marker size ~ parameters)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _label(params: dict) -> str:
    """`layers=3,hidden=256,heads=8`: the last part of each key; joint values flattened."""
    parts = []
    for key, value in params.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        parts += [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in items]
    return ",".join(parts)


def export_chosen(storage: Storage, report: dict) -> None:
    """Copy the chosen trial's exported student to `<sweep>/student` (any storage)."""
    chosen = report["chosen"]
    if chosen is None:
        return
    from distill.cluster.tune_sweep import TRIALS_DIR

    with tempfile.TemporaryDirectory(prefix="distill-chosen-") as tmp:
        storage.get_dir(f"{TRIALS_DIR}/{chosen['trial_id']}/{CHOSEN_DIR}", tmp)
        storage.put_dir(tmp, CHOSEN_DIR)
    chosen["student"] = f"{storage.uri}/{CHOSEN_DIR}"


def write_sweep_outputs(storage: Storage, report: dict) -> None:
    export_chosen(storage, report)
    if any(r["status"] == "completed" for r in report["trials"]):
        storage.put(PARETO_PNG, pareto_png(report))
    storage.write_text(SWEEP_REPORT_FILE, json.dumps(report, indent=2))


def format_sweep_table(report: dict) -> str:
    metric = report.get("quality_metric") or "quality"
    head = ("trial", "status", "values", metric, "retention", "speedup", "params", "front")
    rows = [head]
    t = report["teacher"]
    rows.append(
        (
            "teacher",
            "",
            "",
            format_number(t["quality"]),
            "1",
            "1",
            format_number(t["parameters"]),
            "",
        )
    )
    for r in report["trials"]:
        m = r["metrics"]
        quality = m.get("quality")
        if quality is None and "eval_quality" in m:
            quality = f"({format_number(m['eval_quality'])} @ step {m.get('step')})"
        chosen = report["chosen"] and report["chosen"]["trial_id"] == r["trial_id"]
        rows.append(
            (
                r["trial_id"] + (" *" if chosen else ""),
                r["status"],
                _label(r["params"]),
                format_number(quality),
                format_number(m.get("retention"), 3),
                format_number(m.get("speedup"), 3),
                format_number(m.get("params")),
                "Q/S" if r["pareto"] else "",
            )
        )
    width = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, width)) for row in rows]
    c = report["counts"]
    lines.append("")
    lines.append(
        f"{c['completed']} completed, {c['stopped']} stopped early, {c['error']} failed, "
        f"{c.get('interrupted', 0)} interrupted (run again to resume); "
        f"front (quality vs speedup): {', '.join(report['pareto']['quality_vs_speedup']) or '-'}"
    )
    if report["chosen"]:
        ch = report["chosen"]
        lines.append(f"chosen: {ch['trial_id']} ({ch['rule']}) -> {ch['student']}")
    elif report.get("choice_error"):
        lines.append(f"no student chosen: {report['choice_error']}")
    cache = report["sweep"].get("teacher_cache")
    if cache:
        lines.append(
            "teacher cache: "
            + (
                f"{cache['key']} ({'hit' if cache['hit'] else 'built'}, {cache['rows']} rows)"
                if cache.get("used")
                else f"bypassed: {cache['reason']}"
            )
        )
    return "\n".join(lines)
