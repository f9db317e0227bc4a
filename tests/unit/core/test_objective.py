"""Objective: layer pairing, the LOSSES registry, projections and the trainable model."""

from __future__ import annotations

import pytest
import torch

from distill.core import losses
from distill.core.attention_terms import AttentionSettings
from distill.core.mixup import mix_labels, mixup
from distill.core.objective import (
    LOSSES,
    DistillationModel,
    MixedBatch,
    Objective,
    ObjectiveSettings,
    layer_pairs,
)
from distill.core.outputs import ModelOutputs, TaskHead, forward_outputs
from distill.core.student import StudentSize, build_student, layer_list

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


SETTINGS = ObjectiveSettings(
    temperature=2.0,
    task_type="classification",
    attention=AttentionSettings(
        teacher_layer=T_LAYERS, student_layer=S_LAYERS, attention_heads=4, relation_heads=4
    ),
)
LABELS = torch.tensor([0, 1, 1])


def _outputs(n_layers: int, width: int, seed: int) -> ModelOutputs:
    """Random but complete outputs: hidden states, pooled, logits, Q/K/V, masked-LM logits."""
    hidden = _hidden(n_layers, width, seed)
    g = torch.Generator().manual_seed(seed + 100)
    qkv = tuple(torch.randn(BATCH, SEQ, width, generator=g) for _ in range(3))
    return ModelOutputs(
        hidden=hidden,
        pooled=losses.masked_mean_pool(hidden[-1], MASK),
        logits=torch.randn(BATCH, 2, generator=g),
        qkv={n_layers: qkv},
        mlm_logits=torch.randn(4, 99, generator=g),
    )


def _objective(weights, student_width=32, settings=SETTINGS) -> Objective:
    return Objective(
        weights, student_hidden=student_width, teacher_hidden=32, pairs=PAIRS, settings=settings
    )


@pytest.mark.parametrize("student_width", [16, 32])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_builds_and_returns_a_finite_scalar(name, student_width):
    objective = _objective({name: 1.0}, student_width)
    total, parts = objective(
        _outputs(S_LAYERS, student_width, 0),
        _outputs(T_LAYERS, 32, 1),
        MASK,
        labels=LABELS,
        mlm_labels=torch.tensor([3, 7, 11, 98]),
    )
    assert set(parts) == {name}
    assert total.shape == () and torch.isfinite(total) and total.item() > 0


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"objective.weights: unknown loss \['nope'\]") as err:
        _objective({"nope": 1.0})
    assert all(name in str(err.value) for name in LOSSES)


def test_which_forwards_each_loss_needs():
    assert not _objective({"hard_label": 1.0, "mlm": 1.0}).needs_teacher
    assert _objective({"hard_label": 1.0, "logit_kl": 1.0}).needs_teacher
    attention = _objective({"attention_kl": 1.0})
    assert (attention.student_qkv_layers, attention.teacher_qkv_layers) == ([S_LAYERS], [T_LAYERS])
    assert _objective({"hidden_mse": 1.0}).teacher_qkv_layers == []


# --- projections -----------------------------------------------------------------


def test_no_projection_when_widths_match():
    assert len(_objective(dict.fromkeys(LOSSES, 1.0)).projections) == 0


def test_projections_when_widths_differ():
    objective = _objective({"hidden_mse": 1.0}, 16)
    assert set(objective.projections) == {"hidden_1", "hidden_2", "pooled"}
    for proj in objective.projections.values():
        assert (proj.in_features, proj.out_features) == (16, 32)
    assert set(_objective({"pooled_cosine": 1.0}, 16).projections) == {"pooled"}
    assert set(_objective({"embedding_mse": 1.0}, 16).projections) == {"hidden_0", "pooled"}
    # Width-free sentence terms alone need no projection: the student's own space is trained.
    assert set(_objective({"pooled_similarity": 1.0}, 16).projections) == set()
    both = {"pooled_similarity": 1.0, "pooled_mse": 1.0}
    assert set(_objective(both, 16).projections) == {"pooled"}


# --- weighted sum ------------------------------------------------------------------


def test_total_is_the_weighted_sum_of_the_pure_losses():
    weights = {
        "hidden_mse": 0.5,
        "pooled_mse": 2.0,
        "pooled_cosine": 0.25,
        "logit_kl": 1.5,
        "attention_kl": 0.3,
        "minilmv2_relations": 0.7,
    }
    objective = _objective(weights)
    student, teacher = _outputs(S_LAYERS, 32, 0), _outputs(T_LAYERS, 32, 1)
    total, parts = objective(student, teacher, MASK)

    sh, th = student.hidden, teacher.hidden
    hidden = torch.stack([losses.hidden_mse(sh[s], th[t], MASK) for s, t in PAIRS]).mean()
    torch.testing.assert_close(parts["hidden_mse"], hidden)
    torch.testing.assert_close(
        parts["pooled_mse"], losses.pooled_mse(student.pooled, teacher.pooled)
    )
    torch.testing.assert_close(
        parts["logit_kl"], losses.logit_kl(student.logits, teacher.logits, temperature=2.0)
    )
    (sq, sk, sv), (tq, tk, tv) = student.qkv[S_LAYERS], teacher.qkv[T_LAYERS]
    torch.testing.assert_close(
        parts["attention_kl"], losses.attention_kl(sq, sk, tq, tk, MASK, num_heads=4)
    )
    relations = [
        losses.self_attention_relation_kl(a, b, MASK, num_relation_heads=4)
        for a, b in ((sq, tq), (sk, tk), (sv, tv))
    ]
    torch.testing.assert_close(parts["minilmv2_relations"], torch.stack(relations).mean())
    torch.testing.assert_close(total, sum(w * parts[n] for n, w in weights.items()))


def test_hard_label_uses_interpolated_targets_on_mixed_batches():
    objective = _objective({"hard_label": 1.0})
    student = _outputs(S_LAYERS, 32, 0)
    soft = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.5, 0.5]])
    _, parts = objective(student, None, MASK, labels=LABELS, soft_labels=soft)
    torch.testing.assert_close(parts["hard_label"], losses.soft_label_ce(student.logits, soft))
    _, plain = objective(student, None, MASK, labels=LABELS)
    torch.testing.assert_close(plain["hard_label"], losses.hard_label_ce(student.logits, LABELS))


# --- the trainable model -----------------------------------------------------------


def _tiny_batch():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 99, (BATCH, SEQ), generator=g), "attention_mask": MASK}


def test_distillation_model_excludes_the_teacher_and_trains_projections(tiny_bert):
    student = build_student(tiny_bert, StudentSize(layers=2, hidden=16, heads=4, ffn=32))
    weights = {"hidden_mse": 1.0, "pooled_cosine": 1.0, "minilmv2_relations": 1.0}
    model = DistillationModel(student, _objective(weights, 16))

    teacher_params = {p.data_ptr() for p in tiny_bert.parameters()}
    assert not teacher_params & {p.data_ptr() for p in model.parameters()}
    optimizer = torch.optim.AdamW(model.parameters())
    in_optimizer = {p.data_ptr() for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_params & in_optimizer

    batch = _tiny_batch()
    with torch.no_grad():
        teacher = forward_outputs(tiny_bert, batch, qkv_layers=model.objective.teacher_qkv_layers)
    total, parts = model(batch, teacher)
    total.backward()

    assert parts["minilmv2_relations"] > 0
    for name, proj in model.objective.projections.items():
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_bert.parameters())
    query = layer_list(student)[-1].attention.self.query.weight
    assert query.grad is not None and query.grad.abs().sum() > 0  # relations reach Q/K/V


def test_mixkd_runs_the_student_on_its_mixed_embeddings(tiny_bert):
    student = build_student(tiny_bert, StudentSize(layers=2, hidden=32, heads=4, ffn=64))
    head = TaskHead(32, 2, "classification")
    model = DistillationModel(student, _objective({"hard_label": 1.0}), head).eval()
    batch = {**_tiny_batch(), "labels": LABELS}
    perm, lam = torch.tensor([2, 0, 1]), 0.25
    mixed_embeds, mixed_mask = mixup(
        student.get_input_embeddings()(batch["input_ids"]), MASK, perm, lam
    )
    mixed_batch = {"input_ids": batch["input_ids"], "attention_mask": mixed_mask}
    soft = mix_labels(LABELS, perm, lam, 2)
    total, parts = model(batch, None, MixedBatch(mixed_batch, None, perm, lam, 0.5, soft))

    expected = forward_outputs(student, mixed_batch, head=head, inputs_embeds=mixed_embeds).logits
    torch.testing.assert_close(parts["mix_hard_label"], losses.soft_label_ce(expected, soft))
    torch.testing.assert_close(total, parts["hard_label"] + 0.5 * parts["mix_hard_label"])
