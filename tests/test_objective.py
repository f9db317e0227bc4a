"""Objective: layer pairing, the LOSSES registry, projections and the trainable model."""

from __future__ import annotations

import pytest
import torch

from distill_core import losses
from distill_core.objective import LOSSES, DistillationModel, Objective, layer_pairs
from distill_core.student import StudentSize, build_student

# --- layer_pairs ---------------------------------------------------------------


def test_layer_pairs_uniform_maps_every_student_layer():
    assert layer_pairs("uniform", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_pairs("uniform", 2, 4) == [(1, 2), (2, 4)]


def test_layer_pairs_last_maps_only_the_top():
    assert layer_pairs("last", 3, 6) == [(3, 6)]


def test_layer_pairs_explicit_list():
    assert layer_pairs([0, 3, 6], 3, 6) == [(1, 0), (2, 3), (3, 6)]


@pytest.mark.parametrize(
    ("layer_map", "message"),
    [([1, 2], "expected 3 teacher layers, got 2"), ([1, 2, 7], "teacher layer 7 not in 0..6")],
)
def test_layer_pairs_errors_name_the_field(layer_map, message):
    with pytest.raises(ValueError, match="objective.layer_map") as err:
        layer_pairs(layer_map, 3, 6)
    assert message in str(err.value)


def test_layer_pairs_unknown_name_raises_value_error():
    with pytest.raises(ValueError, match="objective.layer_map"):
        layer_pairs("lst", 3, 6)


# --- a tiny view of student and teacher hidden states -------------------------

S_LAYERS, T_LAYERS, BATCH, SEQ = 2, 4, 3, 5


def _hidden(n_layers: int, width: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, SEQ, width, generator=g) for _ in range(n_layers + 1)]


MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
PAIRS = layer_pairs("uniform", S_LAYERS, T_LAYERS)


@pytest.mark.parametrize("student_width", [16, 32])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_builds_and_returns_a_finite_scalar(name, student_width):
    objective = Objective({name: 1.0}, student_hidden=student_width, teacher_hidden=32, pairs=PAIRS)
    total, parts = objective(_hidden(S_LAYERS, student_width, 0), _hidden(T_LAYERS, 32, 1), MASK)
    assert set(parts) == {name}
    assert total.shape == () and torch.isfinite(total) and total.item() > 0


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"objective.weights: unknown loss \['nope'\]") as err:
        Objective({"nope": 1.0}, student_hidden=32, teacher_hidden=32, pairs=PAIRS)
    assert all(name in str(err.value) for name in LOSSES)


# --- projections -----------------------------------------------------------------


def test_no_projection_when_widths_match():
    objective = Objective(
        dict.fromkeys(LOSSES, 1.0), student_hidden=32, teacher_hidden=32, pairs=PAIRS
    )
    assert len(objective.projections) == 0


def test_projections_when_widths_differ():
    objective = Objective({"hidden_mse": 1.0}, student_hidden=16, teacher_hidden=32, pairs=PAIRS)
    assert set(objective.projections) == {"hidden_1", "hidden_2", "pooled"}
    for proj in objective.projections.values():
        assert (proj.in_features, proj.out_features) == (16, 32)
    pooled_only = Objective(
        {"pooled_cosine": 1.0}, student_hidden=16, teacher_hidden=32, pairs=PAIRS
    )
    assert set(pooled_only.projections) == {"pooled"}


# --- weighted sum ------------------------------------------------------------------


def test_total_is_the_weighted_sum_of_the_pure_losses():
    weights = {"hidden_mse": 0.5, "pooled_mse": 2.0, "pooled_cosine": 0.25}
    objective = Objective(weights, student_hidden=32, teacher_hidden=32, pairs=PAIRS)
    student, teacher = _hidden(S_LAYERS, 32, 0), _hidden(T_LAYERS, 32, 1)
    total, parts = objective(student, teacher, MASK)

    ps, pt = losses.masked_mean_pool(student[-1], MASK), losses.masked_mean_pool(teacher[-1], MASK)
    hidden = torch.stack([losses.hidden_mse(student[s], teacher[t], MASK) for s, t in PAIRS]).mean()
    torch.testing.assert_close(parts["hidden_mse"], hidden)
    torch.testing.assert_close(parts["pooled_mse"], losses.pooled_mse(ps, pt))
    torch.testing.assert_close(parts["pooled_cosine"], losses.pooled_cosine(ps, pt))
    torch.testing.assert_close(total, sum(w * parts[n] for n, w in weights.items()))


# --- the trainable model -----------------------------------------------------------


def test_distillation_model_excludes_the_teacher_and_trains_projections(tiny_bert):
    student = build_student(tiny_bert, StudentSize(layers=2, hidden=16, heads=2, ffn=32))
    objective = Objective(
        {"hidden_mse": 1.0, "pooled_cosine": 1.0}, student_hidden=16, teacher_hidden=32, pairs=PAIRS
    )
    model = DistillationModel(student, objective)

    teacher_params = {p.data_ptr() for p in tiny_bert.parameters()}
    assert not teacher_params & {p.data_ptr() for p in model.parameters()}
    optimizer = torch.optim.AdamW(model.parameters())
    in_optimizer = {p.data_ptr() for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_params & in_optimizer

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 99, (BATCH, SEQ), generator=g)
    with torch.no_grad():
        teacher_hidden = tiny_bert(
            input_ids=input_ids, attention_mask=MASK, output_hidden_states=True
        ).hidden_states
    total, _ = model(input_ids, MASK, teacher_hidden)
    total.backward()

    for name, proj in objective.projections.items():
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_bert.parameters())
