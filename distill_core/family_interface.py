"""The one interface every model family implements: encoders (BERT-style, with a
transformer or BiLSTM student), causal LMs (GPT-2 / Llama-style) and seq2seq LMs
(BART-style). `distill.core.family_registry.family_of(config)` picks the family once, from the
teacher's config; the preflight, the worker loop, the export and the report then call these
methods and never ask which family they hold.

A family answers, for one stage:
- preflight: `resolve_stage` validates the spec for this teacher (one-line `SpecError`s
  naming the field) and fills in the student's dims; `output_config` is the config of the
  model the stage makes (a later stage's teacher);
- training: `trainable` (student + objective as one `nn.Module`; the teacher stays out),
  `batch_functions` (tokenize, collate), `prepare_batch` (masking / text infilling),
  `on_policy_batch` (the student's own samples, GKD), `teacher_outputs`, `mixed_batch` (MixKD), `eval_counts` (accuracy) and
  `in_training_quality` (STS Spearman for Tune schedulers);
- export: `export` writes the trained student as a Hugging Face folder and returns the
  probe outputs the report compares against the reloaded export; `student_from_state`
  rebuilds the student from a consolidated ZeRO state dict;
- report: `evaluate` compares exported student and teacher (quality, task, speed, size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig

from distill.core.spec import JobSpec, SpecError
from distill.core.student import (
    Gather,
    StudentSize,
    architecture_size,
    no_gather,
)

Batch = dict[str, torch.Tensor]


class ModelFamily(ABC):
    """One kind of teacher and the students distilled from it."""

    name: ClassVar[str]
    losses: ClassVar[dict[str, Callable]]  # the `objective.weights` names this family knows
    auto_class: type  # the transformers Auto class its models load with

    # -- models ---------------------------------------------------------------------------

    def load_model(
        self, folder: str, *, seed: int = 0, dtype: torch.dtype | None = None
    ) -> nn.Module:
        """The model in `folder` (teacher or exported student) at `dtype` (None: as saved).
        Under a live `HfDeepSpeedConfig` of stage 3, transformers loads it straight into
        ZeRO-3 partitions (`cluster/teacher_on_worker.py`)."""
        return self.auto_class.from_pretrained(folder, dtype=dtype)

    def size(self, config: PretrainedConfig) -> StudentSize:
        """The teacher's depth and width (one-line SpecError when the model-type table
        cannot read them from the config)."""
        try:
            return architecture_size(config)
        except ValueError as exc:
            raise SpecError(f"teacher.name: {exc}") from None

    # -- preflight --------------------------------------------------------------------------

    def default_weights(
        self, kind: str, spec: JobSpec, cross_tokenizer: bool = False
    ) -> dict[str, float]:
        """The objective a stage of `kind` gets when `objective.weights` is not set."""
        raise NotImplementedError

    def with_default_objective(
        self, spec: JobSpec, kind: str, cross_tokenizer: bool = False
    ) -> JobSpec:
        """`spec` with `objective.weights` filled in by the family's default when unset."""
        if spec.objective.weights is not None:
            return spec
        weights = self.default_weights(kind, spec, cross_tokenizer)
        objective = spec.objective.model_copy(update={"weights": weights})
        return spec.model_copy(update={"objective": objective})

    @abstractmethod
    def resolve_stage(
        self,
        spec: JobSpec,
        kind: str,
        teacher_config: PretrainedConfig,
        *,
        teacher_has_weights: bool,
        teacher_has_head: bool,
        cross_tokenizer: bool = False,
    ) -> JobSpec:
        """Validate a stage for this teacher; return it with the student's dims filled in.
        cross_tokenizer: the (pretrained) student's tokenizer differs from the teacher's, so
        only objectives that compare whole sentences apply."""

    @abstractmethod
    def output_config(
        self, spec: JobSpec, kind: str, teacher_config: PretrainedConfig
    ) -> PretrainedConfig | None:
        """The config of the model a resolved stage makes (None: it cannot teach)."""

    # -- training ---------------------------------------------------------------------------

    @abstractmethod
    def trainable(
        self,
        spec: JobSpec,
        teacher: nn.Module,
        tokenizer,
        *,
        kind: str = "distill",
        previous_student: str | None = None,
        gather: Gather = no_gather,
    ) -> nn.Module:
        """The trainable half of a stage: forward(batch, teacher_outputs, mixed) -> (loss,
        parts). kind=finetune/pretrain: a copy of the teacher / a fresh model of its
        architecture; previous_student: the export of the stage it continues; `gather`:
        makes a partitioned teacher's parameters whole while the student copies them."""

    @abstractmethod
    def batch_functions(self, tokenizer, teacher_tokenizer=None) -> tuple[Callable, Callable]:
        """(tokenize(dataset, tokenizer, max_length), collate(rows) -> Batch). `tokenizer` is
        the student's; `teacher_tokenizer` the teacher's when it differs (the batch then
        carries both tokenizations)."""

    def prepare_batch(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        """The step's inputs from a collated batch (masks drawn from `generator`)."""
        return batch

    def on_policy_batch(
        self,
        model: nn.Module,
        batch: Batch,
        spec: JobSpec,
        *,
        step: int,
        stream: tuple[int, ...] = (),
        tokenizer=None,
        teacher_tokenizer=None,
    ) -> Batch:
        """`objective.on_policy`: on an optimizer `step` drawn on-policy (alike on every
        rank), the batch of the student's own samples for its prompts (`stream`: the rank
        and micro-batch, which seed the sampling); else `batch` itself. Families without
        on-policy distillation refuse it in `resolve_stage`."""
        return batch

    @abstractmethod
    def teacher_outputs(self, model: nn.Module, teacher: nn.Module, teacher_head, batch: Batch):
        """What the objective reads from the frozen teacher (None when it reads nothing)."""

    def served_outputs(
        self, teacher: nn.Module, teacher_head, view: Batch, *, qkv_layers=(), inputs_embeds=None
    ):
        """What a Ray Serve replica of the teacher (`teacher.placement: service`,
        `cluster/teacher_service.py`) computes for a batch of requests, as `ModelOutputs`."""
        raise NotImplementedError(f"the {self.name} family's teachers are not served")

    def served_teacher_head(self, module: nn.Module, keep) -> Any | None:
        """What a worker keeps of a served teacher (`module`: its skeleton, whose parameters
        `keep(params)` reads for good), handed to `teacher_outputs` as `teacher_head`; None
        when the replica applies every head itself."""
        return None

    def mixed_batch(
        self, model, batch: Batch, teacher, teacher_head, spec: JobSpec, generator
    ) -> Any | None:
        """MixKD's mixed copy of the batch; None when the objective has no mixup."""
        return None

    def eval_counts(self, model: nn.Module, batch: Batch) -> tuple[int, int] | None:
        """(correct, seen) of a classification head on `batch`; None without one."""
        return None

    def in_training_quality(self, model: nn.Module, tokenizer, pairs, max_length: int) -> float:
        raise SpecError(f"evaluation.sts_path: not supported for a {self.name} teacher")

    def cache_plan(self, spec: JobSpec, teacher_config: PretrainedConfig, columns: Sequence[str]):
        """(the teacher tensors a teacher-output cache must hold for `spec`'s objective on
        tokenized rows with `columns`, None) or (None, why the teacher runs live)."""
        return None, f"the {self.name} family's objectives are not cached"

    def cache_rows(self, teacher: nn.Module, teacher_head, tokenizer, batch: Batch, plan):
        """One collated batch's cached tensors (`distill.core.cache_format.assemble_shard`
        input): `counts` per row, then per-token and per-row tensors."""
        raise NotImplementedError(f"the {self.name} family has no teacher-output cache")

    def cached_outputs(self, cache, split: str, index: torch.Tensor, batch: Batch, dtype):
        """What `teacher_outputs` would give for `batch`, read from a `ShardedCache` by the
        batch rows' `index` into `split`."""
        raise NotImplementedError(f"the {self.name} family has no teacher-output cache")

    # -- export -----------------------------------------------------------------------------

    @abstractmethod
    def export(
        self,
        model: nn.Module,
        tokenizer,
        folder: str | Path,
        *,
        max_length: int,
        st_teacher: str | None,
    ) -> torch.Tensor:
        """Write the student of a trained `model` (any dtype, unpartitioned) as an HF folder;
        return its outputs on `PROBE_TEXTS` for the report's export check."""

    @abstractmethod
    def student_from_state(
        self, spec: JobSpec, teacher_config: PretrainedConfig, state: dict[str, torch.Tensor]
    ) -> nn.Module:
        """The trainable model rebuilt from a consolidated fp32 state dict (ZeRO shards)."""

    # -- report -----------------------------------------------------------------------------

    @abstractmethod
    def evaluate(
        self,
        spec: JobSpec,
        teacher_dir: str,
        student_dir: str | Path,
        eval_rows,
        probe: torch.Tensor,
        speed: dict | None = None,
    ) -> dict:
        """The report's family sections: teacher, student, size, quality, task, speed,
        export_check (docs/report.md). `speed`: the teacher's and student's throughput
        already measured by the report's latency rounds (`jobs/serving.py`, same threads,
        texts and batch size), used as the speed section instead of timing them again."""
