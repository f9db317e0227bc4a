"""Turn a DeepSpeed checkpoint (ZeRO-3 shards of every rank, or ZeRO-0/1/2) back into a
normal Hugging Face student folder, for runs stopped before they exported one.

The engine holds a `DistillationModel`: keys `student.*` (the student encoder) and
`objective.projections.*` (the learned student->teacher projections; `pooled` becomes the
sentence-transformers Dense module, as in the run's own export).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from distill.cluster.run_files import ENGINE_TAG
from distill.core.export import export_student
from distill.core.generative import (
    GenerativeSize,
    auto_class,
    generative_student_config,
    is_generative,
    model_family,
)
from distill.core.spec import JobSpec
from distill.core.student import StudentSize, student_config
from distill.core.teacher import is_sentence_transformer, load_teacher_config, resolve_teacher

_STUDENT = "student."
_POOLED = "objective.projections.pooled."


def consolidated_state(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 `DistillationModel` state dict rebuilt from every rank's shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=ENGINE_TAG)


def export_from_checkpoint(checkpoint_dir: str | Path, spec: JobSpec, out_dir: str | Path) -> Path:
    """Write the student of a DeepSpeed checkpoint as an HF (+ sentence-transformers) folder.
    `spec` is the run's resolved config.yaml (student widths filled in)."""
    state = consolidated_state(checkpoint_dir)
    s = spec.student
    teacher_config = load_teacher_config(spec.teacher.name)
    if is_generative(teacher_config):  # a GPT-2 / BART-style student: its Auto LM class
        config = generative_student_config(
            teacher_config, GenerativeSize(s.layers, s.hidden, s.heads, s.ffn, s.decoder_layers)
        )
        student = auto_class(model_family(config)).from_config(config)
    else:
        config = student_config(teacher_config, StudentSize(s.layers, s.hidden, s.heads, s.ffn))
        student = AutoModel.from_config(config)
    weights = {k[len(_STUDENT) :]: v for k, v in state.items() if k.startswith(_STUDENT)}
    missing, unexpected = student.load_state_dict(weights, strict=False)
    persistent_buffers = {n for n, _ in student.named_buffers()}
    missing = [k for k in missing if k not in persistent_buffers]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match student from config.yaml: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    student.eval()
    projection = None
    if f"{_POOLED}weight" in state:
        w = state[f"{_POOLED}weight"]
        bias = state.get(f"{_POOLED}bias")
        projection = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            projection.weight.copy_(w)
            if bias is not None:
                projection.bias.copy_(bias)
    teacher_path = resolve_teacher(spec.teacher.name)
    return export_student(
        student,
        AutoTokenizer.from_pretrained(teacher_path),
        out_dir,
        projection=projection,
        sentence_transformer_teacher=teacher_path
        if is_sentence_transformer(spec.teacher.name)
        else None,
        max_seq_length=spec.data.max_length,
    )
