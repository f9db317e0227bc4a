"""Turn a DeepSpeed checkpoint (ZeRO-3 shards of every rank, or ZeRO-0/1/2) back into a
normal Hugging Face student folder, for runs stopped before they exported one.

The engine holds the family's trainable model (`student.*`, and for encoders
`objective.projections.*`: `pooled` becomes the sentence-transformers Dense module, as in
the run's own export); the teacher's family rebuilds it and exports it as a run would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from distill.cluster.run_files import ENGINE_TAG
from distill.core.family_registry import family_of
from distill.core.spec import JobSpec
from distill.core.teacher import is_sentence_transformer, load_teacher_config, resolve_teacher


def consolidated_state(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict of the trained model, rebuilt from every rank's shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=ENGINE_TAG)


def export_from_checkpoint(checkpoint_dir: str | Path, spec: JobSpec, out_dir: str | Path) -> Path:
    """Write the student of a DeepSpeed checkpoint as an HF (+ sentence-transformers) folder.
    `spec` is the run's resolved config.yaml (student widths filled in)."""
    teacher_config = load_teacher_config(spec.teacher.name)
    family = family_of(teacher_config)
    model = family.student_from_state(spec, teacher_config, consolidated_state(checkpoint_dir))
    teacher_path = resolve_teacher(spec.teacher.name)
    family.export(
        model,
        AutoTokenizer.from_pretrained(teacher_path),
        out_dir,
        max_length=spec.data.max_length,
        st_teacher=teacher_path if is_sentence_transformer(spec.teacher.name) else None,
    )
    return Path(out_dir)
