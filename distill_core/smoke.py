"""Smoke mode (`--smoke`): the same job shrunk to about a minute on two CPU cores, except the
fields the user set explicitly. `smoke_plan` says what changes (and what the user kept),
`apply_smoke` changes it; `distill.core.stages` and `distill.jobs.tune` plan pipelines and
sweeps with the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from distill.core.spec import JobSpec
from distill.core.spec_loading import field_value, with_value

SMOKE_STEPS = 20
_TRAINING_LENGTH = ("training.steps", "training.epochs")


def smoke_targets(spec: JobSpec) -> dict[str, Any]:
    """What `--smoke` makes of each field it shrinks: caps and fixed small values."""
    t, d, e, o = spec.training, spec.data, spec.evaluation, spec.objective
    # Sequence-level KD generates a target per training row before training: keep it small.
    rows = 256 if o.sequence_kd is not None else 2000
    targets = {
        "training.steps": min(t.steps or SMOKE_STEPS, SMOKE_STEPS),
        "training.epochs": None,
        "training.batch_size": min(t.batch_size, 16),
        "training.warmup_steps": min(t.warmup_steps, 2),
        "training.log_every": 5,
        "training.eval_every": 10,
        "training.checkpoint_every": 10,
        "data.max_train_samples": min(d.max_train_samples or rows, rows),
        "data.max_eval_samples": min(d.max_eval_samples, 64),
        "data.max_length": min(d.max_length, 64),
        "evaluation.max_sts_pairs": min(e.max_sts_pairs or 200, 200),
        "evaluation.throughput_texts": min(e.throughput_texts, 64),
        "evaluation.throughput_rounds": 1,
        "evaluation.generation_length": min(e.generation_length, 16),
        "evaluation.latency_rounds": min(e.latency_rounds, 20),
    }
    if o.sequence_kd is not None:
        targets["objective.sequence_kd.num_beams"] = 1
        targets["objective.sequence_kd.max_new_tokens"] = min(o.sequence_kd.max_new_tokens, 24)
        targets["objective.sequence_kd.batch_size"] = 64
    if o.on_policy is not None:  # the student samples every on-policy step
        targets["objective.on_policy.max_new_tokens"] = min(o.on_policy.max_new_tokens, 16)
    return targets


@dataclass(frozen=True)
class SmokePlan:
    """What `--smoke` does: `changed` {field: (old, new)} for the fields the user left
    unset, `kept` {field: (value, what smoke would have made it)} for those the user set."""

    changed: dict[str, tuple[Any, Any]]
    kept: dict[str, tuple[Any, Any]]

    def prefixed(self, prefix: str) -> SmokePlan:
        """The same plan with every field name prefixed (`base.`, `stages.1.`)."""
        return SmokePlan(
            {f"{prefix}{k}": v for k, v in self.changed.items()},
            {f"{prefix}{k}": v for k, v in self.kept.items()},
        )

    def __or__(self, other: SmokePlan) -> SmokePlan:
        return SmokePlan({**self.changed, **other.changed}, {**self.kept, **other.kept})

    def describe(self) -> str:
        """One line: what --smoke changed and what it kept because the user set it."""
        changed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in self.changed.items())
        kept = ", ".join(f"{k}={_show(v)}" for k, (v, _) in self.kept.items())
        parts = [changed, f"kept as set: {kept}" if kept else ""]
        return "; ".join(p for p in parts if p) or "nothing to shrink"


def plan_changes(model: BaseModel, targets: dict[str, Any], explicit: set[str]) -> SmokePlan:
    """Set each field of `targets` (dotted) to its value, except those in `explicit`."""
    changed, kept = {}, {}
    for name, target in targets.items():
        current = field_value(model, name)
        if current == target:
            continue
        if name in explicit:
            kept[name] = (current, target)
        else:
            changed[name] = (current, target)
    return SmokePlan(changed, kept)


def smoke_plan(spec: JobSpec, explicit: set[str]) -> SmokePlan:
    """The smoke changes for `spec`, leaving every field in `explicit` as it is. The
    training length (steps or epochs) is one setting: either given, both are kept."""
    if explicit & set(_TRAINING_LENGTH):
        explicit = explicit | set(_TRAINING_LENGTH)
    return plan_changes(spec, smoke_targets(spec), explicit)


def apply_smoke(model: BaseModel, plan: SmokePlan) -> BaseModel:
    """`model` with the plan's changes made."""
    for name, (_, new) in plan.changed.items():
        model = with_value(model, name, new)
    return model


def smoke(spec: JobSpec, explicit: set[str] | None = None) -> JobSpec:
    """Shrink steps, data and evaluation so the job finishes in about a minute, except the
    fields the user set explicitly (`explicit`: `override_fields` of the `--set`s)."""
    return apply_smoke(spec, smoke_plan(spec, explicit or set()))


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)
