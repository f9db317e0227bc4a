"""Every example in examples/ runs through `distill run --smoke` (in-process, on the shared
Ray session). Examples that need labelled task data skip when ../shared/data is absent;
task-agnostic ones then distil on the built-in corpus instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.run import run_job
from jobs.spec import load_spec
from jobs.stages import expand_stages, smoke_pipeline

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# The generative LightPAFF examples run (with --smoke and more checks) in test_ray_generative.py.
GENERATIVE = {"lightpaff_gpt2.yaml", "lightpaff_seq2seq.yaml"}
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name not in GENERATIVE)
FAST_EVAL = [
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
    "evaluation.max_sts_pairs=64",
    "scaling.num_workers=2",
    "training.steps=6",  # smoke caps every stage at 20 steps; 6 show the loss terms as well
]


def _needs_task_data(raw: dict) -> bool:
    return "task" in raw or any("task" in stage for stage in raw.get("stages", []))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_with_smoke(ray_session, tmp_path, monkeypatch, example):
    monkeypatch.chdir(ROOT)  # examples name data relative to the repo root
    raw = yaml.safe_load(example.read_text())
    overrides = list(FAST_EVAL)
    if not (SHARED / "sst2" / "train.tsv").is_file():
        if _needs_task_data(raw):
            pytest.skip(f"{example.name} needs labelled SST-2 from ../shared/data (absent)")
        overrides += [
            "data.train.path=builtin:docstrings",
            "data.text_columns=null",
            "evaluation.sts_path=null",
        ]
    spec = smoke_pipeline(load_spec(example, overrides))
    report = run_job(spec, str(tmp_path / example.stem))

    assert report["run"]["status"] == "completed"
    stages = expand_stages(spec)
    assert [s["name"] for s in report["stages"]] == [s.name for s in stages]
    last = json.loads((tmp_path / example.stem / "metrics.jsonl").read_text().splitlines()[-1])
    for name, weight in stages[-1].spec.objective.weights.items():
        if weight > 0:
            assert f"loss_{name}" in last, name  # every loss of the last stage was computed
    assert report["export_check"]["max_abs_diff"] < 1e-4
    assert report["teacher_check"]["unchanged"] is True
