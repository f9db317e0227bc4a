"""The worker loop's loss step, driven without Ray or a process group: the family's
trainable module on one prepared batch, with the non-finite guard's verdict."""

from __future__ import annotations

import datasets
import torch

from distill.cluster.worker_loop import loss_step
from distill.core.family_registry import FAMILIES
from distill.core.spec_loading import load_spec

TEXTS = ["the cat sat on the mat", "a dog ran far away", "birds sing at dawn"]


def _encoder_step(teacher_dir, tiny_bert, tiny_tokenizer):
    family = FAMILIES["encoder"]
    spec = load_spec(
        None,
        [
            f"teacher.name={teacher_dir}",
            "student.layers=1",
            "student.init=first_k",
            "objective.weights={hidden_mse: 1.0, pooled_cosine: 0.5}",
        ],
    )
    spec = family.resolve_stage(
        spec, "distill", tiny_bert.config, teacher_has_weights=True, teacher_has_head=False
    )
    tiny_bert.eval().requires_grad_(False)
    model = family.trainable(spec, tiny_bert, tiny_tokenizer)
    tokenize, collate = family.batch_functions(tiny_tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), tiny_tokenizer, 16)
    batch = family.prepare_batch(model, collate(list(rows)), torch.Generator().manual_seed(0))
    targets = family.teacher_outputs(model, tiny_bert, None, batch)
    return spec, model, batch, targets


def test_loss_step_is_the_weighted_sum_of_its_parts(teacher_dir, tiny_bert, tiny_tokenizer):
    spec, model, batch, targets = _encoder_step(teacher_dir, tiny_bert, tiny_tokenizer)
    loss, parts, bad = loss_step(model, batch, targets)
    assert bad == []
    assert set(parts) == {"hidden_mse", "pooled_cosine"}
    weights = spec.objective.weights
    expected = sum(weights[k] * v for k, v in parts.items())
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the student learns from it; the teacher gets no gradient
    assert all(p.grad is None for p in tiny_bert.parameters())
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_loss_step_names_what_is_not_finite(teacher_dir, tiny_bert, tiny_tokenizer):
    _, model, batch, targets = _encoder_step(teacher_dir, tiny_bert, tiny_tokenizer)
    targets.hidden[-1][0, 0, 0] = float("nan")  # a damaged teacher target
    _, _, bad = loss_step(model, batch, targets)
    assert "loss" in bad and "hidden_mse" in bad
    assert "pooled_cosine" not in bad  # pooled vectors come from other layers' outputs
