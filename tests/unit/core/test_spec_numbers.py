"""Numbers in the job spec and the sweep spec: every float must be finite and every count
must fit the C integers it ends up in, each refusal naming its field. The float fields are
found by walking the models, so a field added later is covered without editing this test."""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from distill.cluster.sweep_spec import SweepSpec, validate_sweep
from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import load_spec, load_spec_dict

NOT_FINITE = [math.inf, -math.inf, math.nan]
KEY = "k"  # the key used for dict-valued fields (objective.weights.k, space.k)
VALID_SPACE = {"student.layers": {"grid": [1]}}


def _walk(tp: Any, path: tuple) -> set[tuple]:
    """Paths (field names, `KEY` for dict values, indexes for tuple items) of every float."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is float:
        return {path}
    if origin is Annotated:
        return _walk(args[0], path)
    if origin in (Union, types.UnionType):
        return set().union(*(_walk(a, path) for a in args))
    if origin is dict:
        return _walk(args[1], (*path, KEY))
    if origin is tuple:
        return set().union(*(_walk(a, (*path, i)) for i, a in enumerate(args)))
    if origin is list:
        return _walk(args[0], (*path, 0))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        found: set[tuple] = set()
        for name, info in tp.model_fields.items():
            found |= _walk(info.annotation, (*path, name))
        return found
    return set()


def _raw(path: tuple, value: float, base: dict | None = None) -> dict:
    """A raw spec with `value` at `path` (other tuple items 1.0, list items one value)."""
    raw: dict = {**(base or {})}
    node: Any = raw
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(nxt, int):
            width = 2 if not isinstance(key, int) else 1
            child = [1.0] * max(width, nxt + 1)
        else:
            child = dict(node.get(key, {})) if isinstance(node, dict) else {}
        node[key] = child
        node = child
    node[path[-1]] = value
    return raw


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


JOB_FLOATS = sorted(_walk(JobSpec, ()), key=_dotted)
SWEEP_FLOATS = sorted(_walk(SweepSpec, ()), key=_dotted)


def test_the_walk_finds_the_float_fields():
    job = {_dotted(p) for p in JOB_FLOATS}
    assert {"training.learning_rate", "training.epochs", "objective.temperature"} <= job
    assert {"objective.weights.k", "objective.mixup.alpha", "scaling.gpus_per_worker"} <= job
    sweep = {_dotted(p) for p in SWEEP_FLOATS}
    assert {"space.k.uniform.0", "space.k.loguniform.1", "scheduler.reduction_factor"} <= sweep


@pytest.mark.parametrize("value", NOT_FINITE, ids=str)
@pytest.mark.parametrize("path", JOB_FLOATS, ids=_dotted)
def test_every_job_spec_float_refuses_inf_and_nan_naming_the_field(path, value):
    with pytest.raises(SpecError) as err:
        load_spec_dict(_raw(path, value))
    field, _, message = str(err.value).partition(": ")
    assert field == _dotted(path) and "finite" in message, str(err.value)


@pytest.mark.parametrize("value", NOT_FINITE, ids=str)
@pytest.mark.parametrize("path", SWEEP_FLOATS, ids=_dotted)
def test_every_sweep_spec_float_refuses_inf_and_nan_naming_the_field(path, value):
    raw = _raw(path, value, {"space": {KEY: {"uniform": [0.0, 1.0]}}})
    if path[0] == "space" and path[2] != "uniform":
        del raw["space"][KEY]["uniform"]
    if path[0] != "space":
        raw["space"] = VALID_SPACE
    with pytest.raises(SpecError) as err:
        validate_sweep(raw)
    field, _, message = str(err.value).partition(": ")
    assert field == _dotted(path) and "finite" in message, str(err.value)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN"])
def test_overrides_with_yaml_infinities_are_refused(text):
    with pytest.raises(SpecError, match=r"^training\.epochs: .*finite"):
        load_spec(None, [f"training.epochs={text}"])
    with pytest.raises(SpecError, match=r"^base\.training\.learning_rate: .*finite"):
        validate_sweep({"base": {"training": {"learning_rate": math.inf}}, "space": VALID_SPACE})


def test_a_stage_float_is_checked_when_the_stages_expand():
    from distill.core.stages import expand_stages

    spec = load_spec(None, ["stages=[{name: a, training: {learning_rate: .inf}}]"])
    with pytest.raises(SpecError, match=r"^stages\.0\.training\.learning_rate: .*finite"):
        expand_stages(spec)


@pytest.mark.parametrize(
    "override, field",
    [
        ("training.seed=-1", "training.seed"),
        ("training.seed=4294967296", "training.seed"),
        ("training.steps=1e30", "training.steps"),
        ("training.warmup_steps=99999999999", "training.warmup_steps"),
        ("evaluation.throughput_texts=1e12", "evaluation.throughput_texts"),
    ],
)
def test_integers_out_of_range_name_their_field(override, field):
    with pytest.raises(SpecError, match=rf"^{field}: "):
        load_spec(None, [override])


def test_the_largest_seed_and_count_are_accepted():
    spec = load_spec(None, ["training.seed=4294967295", "training.steps=2147483647"])
    assert spec.training.seed == 2**32 - 1 and spec.training.steps == 2**31 - 1
