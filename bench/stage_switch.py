"""Pipeline stage switch: time from one stage's last step to the next stage's first step.

    python bench/stage_switch.py RUN_DIR [RUN_DIR ...]      # finished pipeline runs

For consecutive stages A -> B of a run, from the Ray Train report log (`reports.jsonl`,
wall-clock times of every report) and B's metrics (mean milliseconds per step):

    switch = t(B's first report) - t(A's final report) - steps(B's first report) x step time(B)

It reads both layouts: one Ray Train run for all stages (`RUN/train/reports.jsonl`, events
tagged with their stage; `RUN/stages/NAME/metrics.jsonl`), and the earlier one Ray Train run
per stage (`RUN/stages/NAME/reports.jsonl`, metrics in the stage's final checkpoint), so
the same command measures the code before and after the change. The in-worker figure of
the current layout (`stage_switch_s` in a stage's first metrics row) is printed beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("teacher", "forward", "backward", "step")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stage_metrics(run: Path, name: str) -> list[dict]:
    folder = run / "stages" / name
    if (folder / "metrics.jsonl").is_file():
        return _lines(folder / "metrics.jsonl")
    checkpoints = sorted(p for p in folder.glob("checkpoint_*") if p.is_dir())
    return json.loads((checkpoints[-1] / "train_state.json").read_text())["history"]


def _stage_reports(run: Path, names: list[str]) -> dict[str, list[dict]]:
    one_run = run / "train" / "reports.jsonl"
    if one_run.is_file():
        events = [e for e in _lines(one_run) if e["event"] == "report"]
        return {n: [e for e in events if e.get("stage") == n] for n in names}
    return {
        n: [e for e in _lines(run / "stages" / n / "reports.jsonl") if e["event"] == "report"]
        for n in names
    }


def switches(run: Path) -> list[dict]:
    config = run / "config.yaml"
    import yaml

    names = [s["name"] for s in yaml.safe_load(config.read_text())["stages"]]
    reports = _stage_reports(run, names)
    rows = []
    for a, b in zip(names, names[1:]):
        first = _stage_metrics(run, b)[0]
        step_s = sum(first.get(f"ms_{p}", 0.0) for p in PHASES) / 1000
        gap = reports[b][0]["time"] - reports[a][-1]["time"] - reports[b][0]["step"] * step_s
        rows.append(
            {
                "from": a,
                "to": b,
                "switch_s": round(gap, 2),
                "in_worker_s": round(first["stage_switch_s"], 2)
                if "stage_switch_s" in first
                else None,
            }
        )
    return rows


def main() -> None:
    for arg in sys.argv[1:]:
        rows = switches(Path(arg))
        for row in rows:
            print(json.dumps({"run": arg, **row}))
        mean = sum(r["switch_s"] for r in rows) / len(rows)
        print(json.dumps({"run": arg, "mean_switch_s": round(mean, 2)}))


if __name__ == "__main__":
    main()
