"""`search.order: init_quality`: a grid's students scored before training, best first."""

from __future__ import annotations

import pytest

from distill.cluster.sweep_spec import SweepSpec
from distill.core.data import load_sts_pairs
from distill.core.evaluation import sts_spearman
from distill.core.export import SentenceEncoder
from distill.core.teacher import PACKAGED_TEACHER, load_teacher
from distill.jobs.sweep_check import check_sweep
from distill.jobs.sweep_order import init_quality_order

BASE = {
    "student": {"init": "width_slice"},
    "data": {"max_train_samples": 64, "max_eval_samples": 16, "max_length": 64},
    "objective": {"weights": {"hidden_mse": 1.0, "pooled_cosine": 1.0}},
    "training": {"steps": 4, "batch_size": 4},
    "scaling": {"num_workers": 1},
    "evaluation": {"sts_path": "builtin:sts-sample", "max_sts_pairs": 200},
}


def test_students_are_ranked_by_their_quality_before_training():
    sweep = SweepSpec(
        base=BASE,
        space={
            "student.layers": {"grid": [1, 6]},
            "student": {"grid": [{"hidden": 192, "heads": 6}, {"hidden": 384, "heads": 12}]},
        },
        search={"order": "init_quality"},
    )
    checked = check_sweep(sweep)
    ranked = init_quality_order([(p, stage.spec) for p, stage in checked.combinations])

    assert sorted(map(str, (p for p, _ in ranked))) == sorted(
        map(str, (p for p, _ in checked.combinations))
    )
    scores = [q for _, q in ranked]
    assert scores == sorted(scores, reverse=True)
    # Six full-width layers sliced from the teacher are the teacher (its heads and neurons
    # reordered): the same score as the teacher's own vectors, and the best of the grid.
    best, quality = ranked[0]
    assert best == {"student.layers": 6, "student": {"hidden": 384, "heads": 12}}
    teacher, tokenizer = load_teacher(PACKAGED_TEACHER)
    pairs = load_sts_pairs("builtin:sts-sample", 200)
    assert quality == pytest.approx(
        sts_spearman(SentenceEncoder(teacher, tokenizer), pairs, 64), abs=2e-3
    )
    # One 192-wide layer keeps far less of it.
    assert scores[-1] < quality - 0.1


def test_activation_importance_starts_a_sliced_student_closer_to_the_teacher():
    """`student.importance: activations` on the packaged teacher: a 3-layer student whose
    FFNs keep 768 of 1,536 neurons, scored untrained as `init_quality` scores it. Ranking
    the neurons by what they add on real text (not by output-weight norms alone) keeps
    more of the teacher's STS quality (0.813 vs 0.798 on all of STS-B dev, measured)."""
    combos = []
    for importance in ("weights", "activations"):
        spec = {**BASE, "student": {"init": "width_slice", "layers": 3, "ffn": 768}}
        spec["student"]["importance"] = importance
        sweep = SweepSpec(base=spec, space={"training.seed": {"grid": [0]}})
        ((params, stage),) = check_sweep(sweep).combinations
        combos.append(({"importance": importance}, stage.spec))
    scores = {p["importance"]: q for p, q in init_quality_order(combos)}
    assert scores["activations"] > scores["weights"] + 0.005, scores
