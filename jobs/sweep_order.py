"""`search.order: init_quality`: run a grid best first.

Each combination's student is built as its trial builds it (the same spec, seed and family
builder: teacher layers copied or width-sliced, pooled projection) and scored before any
training with the metric ASHA stops trials on (`in_training_quality`: STS Spearman on
`evaluation.sts_path`). Scoring runs in the sweep's driver, before Ray, in seconds per
combination, and costs no trial a worker group.

Why: ASHA promotes asynchronously, comparing a trial at a rung only with the trials that
reached that rung before it. Run one at a time in the order a depth/width grid is written
(shallow and narrow first), each deeper or wider student leads every rung it reaches and
trains to the end. Best first, the weaker ones meet a strong result at their first rung.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.core.spec import JobSpec


def init_quality_order(
    combinations: list[tuple[dict[str, Any], JobSpec]],
) -> list[tuple[dict[str, Any], float]]:
    """(params, quality at initialisation) for every combination, best first; ties keep
    the grid's order."""
    from distill.core.data import load_sts_pairs
    from distill.core.family_registry import family_of
    from distill.core.teacher import load_teacher

    first = combinations[0][1]
    teacher, tokenizer = load_teacher(first.teacher.name)
    family = family_of(teacher.config)
    pairs = load_sts_pairs(first.evaluation.sts_path, first.evaluation.max_sts_pairs)
    scored = []
    for params, spec in combinations:
        torch.manual_seed(spec.training.seed)
        model = family.trainable(spec, teacher, tokenizer).eval()
        with torch.no_grad():
            quality = family.in_training_quality(model, tokenizer, pairs, spec.data.max_length)
        scored.append((params, float(quality)))
    return sorted(scored, key=lambda item: -item[1])
