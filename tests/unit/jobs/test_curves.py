"""`distill report RUN` draws curves.png (loss parts, eval loss, learning rate, samples/s)
next to report.json from the run's metrics.jsonl; a torn last line (a run still writing)
is skipped."""

from __future__ import annotations

import json

from helpers.reports import GOOD_REPORT

from distill.cluster.storage import LocalStorage
from distill.jobs import cli
from distill.jobs.curves import draw_curves, read_history

HISTORY = [
    {
        "step": s,
        "loss": 2.0 / s,
        "loss_hidden_mse": 1.0 / s,
        "loss_pooled_cosine": 1.0 / s,
        "lr": 1e-4 * min(s, 4) / 4,
        "samples_per_s": 100.0 + s,
        **({"eval_loss": 1.5 / s, "eval_quality": 0.5 + s / 100} if s % 4 == 0 else {}),
    }
    for s in range(2, 21, 2)
]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_curves_are_a_png_of_four_panels():
    assert _png_size(draw_curves(HISTORY, "run")) == (1100, 700)


def test_report_writes_curves_next_to_report_json(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(GOOD_REPORT))
    lines = "".join(json.dumps(h) + "\n" for h in HISTORY) + '{"step": 22, "lo'
    (tmp_path / "metrics.jsonl").write_text(lines)
    assert len(read_history(LocalStorage(tmp_path))) == len(HISTORY)
    assert cli.main(["report", str(tmp_path)]) == 0
    assert _png_size((tmp_path / "curves.png").read_bytes()) == (1100, 700)
    assert f"curves: {tmp_path}/curves.png" in capsys.readouterr().err


def test_a_run_without_metrics_gets_no_curves(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(GOOD_REPORT))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert not (tmp_path / "curves.png").exists()
