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


def test_a_restored_random_state_draws_what_the_saved_run_drew_next(tmp_path):
    from types import SimpleNamespace

    from distill.cluster.worker_loop import random_state, set_random_state

    data = SimpleNamespace(
        mix_generator=torch.Generator().manual_seed(1), mask_generator=torch.Generator()
    )
    stage = SimpleNamespace(data=data)
    torch.manual_seed(5)
    torch.rand(3), torch.rand(2, generator=data.mix_generator)  # mid-run: states advanced
    path = tmp_path / "rng.pt"
    torch.save(random_state(stage), path)

    def draws():
        return (
            torch.nn.functional.dropout(torch.ones(64), 0.5),  # dropout reads torch's state
            torch.rand(4, generator=data.mix_generator),
            torch.randint(0, 9, (4,), generator=data.mask_generator),
        )

    want = draws()
    torch.manual_seed(99)  # a restarted worker: seeded afresh, other states
    data.mix_generator.manual_seed(7), data.mask_generator.manual_seed(8)
    assert not torch.equal(draws()[1], want[1])
    set_random_state(stage, str(path))
    for got, expected in zip(draws(), want, strict=True):
        assert torch.equal(got, expected)
    set_random_state(stage, str(tmp_path / "absent.pt"))  # an older checkpoint: untouched
