"""Pareto fronts, the knee, and the choice of a sweep's student."""

from __future__ import annotations

import pytest

from distill.jobs.pareto import choose, dominates, knee, pareto_front

# quality, speedup, params: four students on a front and one dominated by (b).
POINTS = [
    {"quality": 0.90, "speedup": 1.5, "params": 20},  # a: best quality
    {"quality": 0.88, "speedup": 3.0, "params": 12},  # b: the knee
    {"quality": 0.70, "speedup": 3.5, "params": 8},  # c
    {"quality": 0.60, "speedup": 4.0, "params": 4},  # d: fastest
    {"quality": 0.85, "speedup": 2.5, "params": 14},  # e: dominated by b
]


def test_dominance_needs_one_strict_improvement():
    assert dominates(POINTS[1], POINTS[4], ["quality", "speedup"])
    assert not dominates(POINTS[0], POINTS[1], ["quality", "speedup"])
    assert not dominates(POINTS[1], POINTS[1], ["quality", "speedup"])
    # params: lower is better
    assert dominates(
        {"quality": 1, "params": 1}, {"quality": 1, "params": 2}, ["quality", "params"]
    )


def test_front_keeps_exactly_the_undominated_points():
    assert pareto_front(POINTS, ["quality", "speedup"]) == [0, 1, 2, 3]
    assert pareto_front(POINTS, ["quality", "params"]) == [0, 1, 2, 3]
    # invariant: the front does not depend on the order of the points
    reordered = list(reversed(POINTS))
    front = pareto_front(reordered, ["quality", "speedup"])
    assert sorted(id(reordered[i]) for i in front) == sorted(id(POINTS[i]) for i in [0, 1, 2, 3])


def test_knee_is_the_point_farthest_from_the_ends_chord():
    # Scaled over the front: a=(0,1), b=(0.6,0.93), c=(0.8,0.33), d=(1,0): b is farthest.
    assert knee(POINTS, [0, 1, 2, 3]) == 1
    assert knee(POINTS, [0, 3]) == 0  # two points: the best quality


def test_choose_best_quality_within_limits():
    assert choose(POINTS) == (1, "knee")
    assert choose(POINTS, max_params=13)[0] == 1
    assert choose(POINTS, min_speedup=3.2)[0] == 2
    index, rule = choose(POINTS, max_params=10, min_speedup=3.9)
    assert index == 3 and "params <= 10" in rule and "speedup >= 3.9" in rule
    with pytest.raises(ValueError, match="no finished trial has params <= 1"):
        choose(POINTS, max_params=1)
    with pytest.raises(ValueError, match="no finished trial"):
        choose([])
