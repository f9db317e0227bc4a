"""A job as an ordered list of stages (ERNIE-Tiny's four, LightPAFF's two, MiniLM's
teacher assistant). A spec without `stages` is one stage named `train`.

Each stage is a full `JobSpec`: the job's sections with the stage's sections merged in.
`teacher.name: stage:NAME` names the model an earlier stage produced.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from distill.core.smoke import SmokePlan, apply_smoke, smoke_plan
from distill.core.spec import STAGE_SECTIONS, STAGE_TEACHER_PREFIX, JobSpec, SpecError, format_error
from distill.core.spec_loading import merge, nested

SINGLE_STAGE = "train"


@dataclass(frozen=True)
class Stage:
    """One stage, as preflight resolves it and the workers run it.

    placement: the teacher's `teacher_plan.Placement` once preflight resolved it;
    continues: the earlier stage whose student this one keeps training (`plan_stages`)."""

    name: str
    kind: str  # "distill" | "finetune" | "pretrain"
    spec: JobSpec  # this stage's resolved spec, without `stages`
    placement: object | None = None
    continues: str | None = None

    @property
    def teacher_stage(self) -> str | None:
        """The earlier stage whose output is this stage's teacher, if any."""
        name = self.spec.teacher.name
        return (
            name.removeprefix(STAGE_TEACHER_PREFIX)
            if name.startswith(STAGE_TEACHER_PREFIX)
            else None
        )


def _stage_raw(base: dict, stage) -> dict:
    raw = dict(base)
    for section in STAGE_SECTIONS:
        override = getattr(stage, section)
        if override is None:
            continue
        if section == "objective" and "weights" in override:
            raw["objective"] = {
                k: v for k, v in (raw.get("objective") or {}).items() if k != "weights"
            }
        current = raw.get(section)
        raw[section] = merge(current, override) if isinstance(current, dict) else override
    return raw


def _teacher_family(name: str) -> str:
    """`encoder`, `causal` or `seq2seq`; `encoder` when the config cannot be read here
    (preflight then reports why)."""
    from distill.core.family_registry import model_family
    from distill.core.teacher import load_teacher_config

    try:
        return model_family(load_teacher_config(name))
    except (OSError, ValueError):
        return "encoder"


def expand_stages(spec: JobSpec) -> list[Stage]:
    """The stages in order; raises `SpecError` naming `stages.I.field` on a bad stage."""
    if not spec.stages:
        return [Stage(SINGLE_STAGE, "distill", spec)]
    base = spec.model_dump(mode="json", exclude={"stages"})
    stages: list[Stage] = []
    families: dict[str, str] = {}  # stage name -> family of the model it trains
    for i, stage in enumerate(spec.stages):
        try:
            resolved = JobSpec.model_validate(_stage_raw(base, stage))
        except ValidationError as err:
            raise SpecError(f"stages.{i}.{format_error(err)}") from None
        built = Stage(stage.name, stage.kind, resolved)
        ref = built.teacher_stage
        earlier = [s.name for s in stages]
        if ref is not None and ref not in earlier:
            raise SpecError(
                f"stages.{i}.teacher.name: {STAGE_TEACHER_PREFIX}{ref} is not an earlier stage "
                f"(earlier: {earlier})"
            )
        families[stage.name] = (
            families[ref] if ref is not None else _teacher_family(resolved.teacher.name)
        )
        # Generative teachers fine-tune on their LM loss (causal: plain text); encoders
        # fine-tune a task head, so they need a task.
        if stage.kind == "finetune" and resolved.task is None and families[stage.name] == "encoder":
            raise SpecError(f"stages.{i}.task: a finetune stage needs a task (type, num_labels)")
        stages.append(built)
    return stages


def smoke_pipeline_planned(
    spec: JobSpec, explicit: set[str] | None = None
) -> tuple[JobSpec, SmokePlan]:
    """`smoke` for the job and every stage, and what it changed and kept. `explicit`: the
    dotted fields the user set (`override_fields(--set ...)`; `stages.I.section.field` for a
    stage's), never changed; everything else a config gives is capped (a stage inherits the
    job's shrunk values unless it sets its own explicitly)."""
    explicit = explicit or set()
    job_explicit = {f for f in explicit if not f.startswith("stages.")}
    plan = smoke_plan(spec, job_explicit)
    shrunk = apply_smoke(spec, plan)
    if not spec.stages:
        return shrunk, plan
    stages = []
    for i, (stage, expanded) in enumerate(zip(shrunk.stages, expand_stages(shrunk))):
        own = {f.removeprefix(f"stages.{i}.") for f in explicit if f.startswith(f"stages.{i}.")}
        stage_plan = smoke_plan(expanded.spec, job_explicit | own)
        for name, (_, new) in stage_plan.changed.items():
            section, _, rest = name.partition(".")
            merged = merge(getattr(stage, section) or {}, nested(rest, new))
            stage = stage.model_copy(update={section: merged})
        kept = {k: v for k, v in stage_plan.kept.items() if k in own}  # the job's: listed once
        plan = plan | SmokePlan(stage_plan.changed, kept).prefixed(f"stages.{i}.")
        stages.append(stage)
    return shrunk.model_copy(update={"stages": stages}), plan


def smoke_pipeline(spec: JobSpec, explicit: set[str] | None = None) -> JobSpec:
    """`smoke_pipeline_planned` without the plan."""
    return smoke_pipeline_planned(spec, explicit)[0]


def plan_stages(stages: list[Stage]) -> tuple[Stage, ...]:
    """The stages with `continues` set: a stage carries on the previous distill stage's
    student when it asks for the same one (MiniLM's teacher assistant starts a new one)."""
    plans, previous = [], None
    for stage in stages:
        carry = (
            previous is not None
            and stage.kind == "distill"
            and previous.spec.student == stage.spec.student
        )
        plans.append(replace(stage, continues=previous.name if carry else None))
        if stage.kind == "distill":
            previous = stage
    return tuple(plans)
