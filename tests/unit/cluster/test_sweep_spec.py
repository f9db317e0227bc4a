"""The sweep file: schema errors, combinations that can never run, joint values, smoke."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cluster.sweep_spec import SweepSpec, apply_params, load_sweep
from distill.core.spec import SpecError
from distill.core.spec_loading import override_fields
from distill.jobs.sweep_check import check_sweep
from distill.jobs.tune import smoke_sweep, smoke_sweep_planned

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"

BASE = {
    "data": {"max_train_samples": 64, "max_eval_samples": 16},
    "training": {"steps": 4, "batch_size": 4},
    "scaling": {"num_workers": 1},
}


def _write(tmp_path, sweep: dict):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"base": BASE}, "space: field required"),
        ({"base": BASE, "space": {}}, "needs at least one dimension"),
        ({"base": BASE, "space": {"student.layers": {"grid": [1], "choice": [2]}}}, "exactly one"),
        ({"base": BASE, "space": {"student.layers": {"grid": []}}}, "at least one value"),
        (
            {"base": BASE, "space": {"training.learning_rate": {"loguniform": [1e-3, 1e-4]}}},
            "below high",
        ),
        (
            {"base": BASE, "space": {"student.layers": {"choice": [1, 2]}}},
            "algorithm grid takes only grid",
        ),
        (
            {
                "base": BASE,
                "space": {"student.layers": {"grid": [1, 2]}},
                "search": {"algorithm": "optuna"},
            },
            "use choice instead of grid",
        ),
        (
            {
                "base": BASE,
                "space": {"student.layers": {"grid": [1]}},
                "search": {"objectives": ["quality", "speedup"]},
            },
            "several objectives need algorithm optuna",
        ),
        ({"base": BASE, "space": {"teacher.name": {"grid": ["x"]}}}, "may not change teacher"),
        (
            {
                "base": {**BASE, "evaluation": {"sts_path": "builtin:sts-sample"}},
                "space": {"student.layers": {"choice": [1, 2]}},
                "search": {"algorithm": "random", "order": "init_quality"},
            },
            "order: init_quality orders a grid; algorithm is random",
        ),
        (
            {
                "base": BASE,
                "space": {"student.layers": {"grid": [1, 2]}},
                "search": {"order": "init_quality"},
            },
            "search.order: init_quality scores students on base.evaluation.sts_path",
        ),
        (
            {
                "base": BASE,
                "space": {"student.layers": {"grid": [1]}},
                "scheduler": {"kind": "hyperband"},
            },
            "scheduler.kind",
        ),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, sweep, message):
    with pytest.raises(SpecError) as err:
        load_sweep(_write(tmp_path, sweep))
    assert message.lower() in str(err.value).lower()
    assert "\n" not in str(err.value)


def test_missing_file_and_base_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="base: job spec job.yaml not found"):
        load_sweep(
            _write(tmp_path, {"base": "job.yaml", "space": {"student.layers": {"grid": [1]}}})
        )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(BASE))
    sweep = load_sweep(
        _write(tmp_path, {"base": "job.yaml", "space": {"student.layers": {"grid": [1]}}})
    )
    assert sweep.base["training"]["steps"] == 4


def test_overrides_address_the_sweep_file(tmp_path):
    path = _write(tmp_path, {"base": BASE, "space": {"student.layers": {"grid": [1, 2]}}})
    sweep = load_sweep(path, ["base.training.steps=9", "search.seed=3"])
    assert sweep.base["training"]["steps"] == 9 and sweep.search.seed == 3


def test_joint_values_deep_merge_into_the_section():
    raw = apply_params(BASE, {"student": {"hidden": 192, "heads": 6}, "student.layers": 2})
    assert raw["student"] == {"hidden": 192, "heads": 6, "layers": 2}
    assert raw["training"] == BASE["training"]  # untouched sections stay


def test_invalid_combinations_are_rejected_before_anything_runs():
    sweep = SweepSpec(
        base=BASE,
        space={"student.hidden": {"grid": [384, 200]}, "student.heads": {"grid": [12, 6]}},
    )
    with pytest.raises(SpecError) as err:
        check_sweep(sweep)
    text = str(err.value)
    # 200 is divisible by neither 12 nor 6: 2 of the 4 combinations can never run.
    assert text.startswith("space: 2 of 4 combinations can never run, e.g. student.hidden=200")
    assert "student.heads" in text


def test_valid_space_resolves_every_combination():
    sweep = SweepSpec(
        base=BASE,
        space={
            "student.layers": {"grid": [1, 2]},
            "student": {
                "grid": [
                    {"hidden": 384, "heads": 12},
                    {"hidden": 192, "heads": 6, "init": "width_slice"},
                ]
            },
            "training.learning_rate": {"grid": [1e-4, 3e-4]},
        },
    )
    checked = check_sweep(sweep)
    assert len(checked.combinations) == 8
    dims = {
        (s.spec.student.layers, s.spec.student.hidden, s.spec.student.ffn)
        for _, s in checked.combinations
    }
    # ffn resolves from the teacher's ratio (4x) for each width
    assert dims == {(1, 384, 1536), (2, 384, 1536), (1, 192, 768), (2, 192, 768)}
    # the base keeps student dims unset, so each trial's values resolve them
    assert checked.base["student"]["hidden"] is None


def test_smoke_sweep_keeps_two_to_four_trials():
    sweep = SweepSpec(
        base={**BASE, "training": {"batch_size": 4}},
        space={
            "student.layers": {"grid": [1, 2, 3]},
            "student.hidden": {"grid": [384, 192, 96]},
            "student.init": {"grid": ["random", "width_slice"]},
        },
        scheduler={"kind": "asha"},
    )
    small, plan = smoke_sweep_planned(sweep)
    note = plan.describe()
    grid = [len(p.grid) for p in small.space.values()]
    total = 1
    for n in grid:
        total *= n
    assert 2 <= total <= 4
    assert small.base["training"]["steps"] <= 20
    assert small.scheduler.grace_period <= 10
    assert "space.student.layers [1, 2, 3] -> [1, 2]" in note and "\n" not in note


def test_smoke_sweep_keeps_what_set_gives_and_caps_the_file():
    sweep = SweepSpec(
        base={**BASE, "training": {"steps": 500, "checkpoint_every": 100, "eval_every": 200}},
        space={"student.layers": {"grid": [1, 2]}},
        scheduler={"kind": "asha", "grace_period": 100},
    )
    explicit = override_fields(
        [
            "base.training.steps=500",
            "base.training.checkpoint_every=100",
            "scheduler.grace_period=100",
        ]
    )
    small, plan = smoke_sweep_planned(sweep, explicit)
    note = plan.describe()
    assert small.base["training"]["steps"] == 500
    assert small.base["training"]["checkpoint_every"] == 100
    assert small.base["training"]["eval_every"] == 10  # only the file sets it: capped
    assert small.scheduler.grace_period == 100
    assert "kept as set: " in note and "base.training.steps=500" in note
    assert "scheduler.grace_period=100" in note


def test_smoke_of_a_sweep_with_a_bad_base_names_the_field(tmp_path):
    path = _write(
        tmp_path, {"base": {"student": {"bogus": 1}}, "space": {"student.layers": {"grid": [1]}}}
    )
    with pytest.raises(SpecError, match=r"^base\.student\.bogus: unknown field$"):
        load_sweep(path)
    with pytest.raises(SpecError, match=r"^base\.student\.bogus: unknown field$"):
        smoke_sweep_planned(SweepSpec(base={"student": {"bogus": 1}}, space={"a.b": {"grid": [1]}}))


@pytest.mark.skipif(
    not (SHARED / "stsb" / "sts-dev.csv").is_file(), reason="needs ../shared/data (STS-B, SST-2)"
)
def test_example_sweep_is_valid_and_its_smoke_version_small(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example names data relative to the repo root
    sweep = load_sweep(ROOT / "examples" / "sweep_depth_width.yaml")
    checked = check_sweep(sweep)
    assert len(checked.combinations) == 9
    assert {s.spec.student.hidden for _, s in checked.combinations} == {384, 256, 192}
    assert len(check_sweep(smoke_sweep(sweep)).combinations) == 4


def test_a_randint_too_wide_to_check_is_refused_without_listing_it(tmp_path):
    path = _write(tmp_path, {"space": {"training.seed": {"randint": [0, 10**12]}}})
    with pytest.raises(SpecError, match=r"^space\.training\.seed: randint: .* at most 5000"):
        load_sweep(path)
