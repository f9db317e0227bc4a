"""Pareto fronts and the choice of one student from a sweep's trials.

Pure functions over trial metrics (`quality`, `speedup`, `params`); `sweep_report` applies
them to finished trials.
"""

from __future__ import annotations

from collections.abc import Sequence

# Direction of each metric: +1 higher is better, -1 lower is better.
DIRECTIONS = {"quality": 1, "retention": 1, "speedup": 1, "params": -1}


def dominates(a: dict, b: dict, metrics: Sequence[str]) -> bool:
    """a is at least as good as b on every metric and strictly better on one."""
    better = False
    for m in metrics:
        x, y = DIRECTIONS[m] * a[m], DIRECTIONS[m] * b[m]
        if x < y:
            return False
        better |= x > y
    return better


def pareto_front(points: Sequence[dict], metrics: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in input order."""
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, metrics) for j, q in enumerate(points) if j != i)
    ]


def knee(
    points: Sequence[dict], front: Sequence[int], x: str = "speedup", y: str = "quality"
) -> int:
    """The front's knee: after scaling both axes to [0, 1] over the front, the point
    farthest from the line joining its two ends (the best trade before the returns of
    one metric fall off). With fewer than 3 points, the best `y`."""
    if len(front) < 3:
        return max(front, key=lambda i: DIRECTIONS[y] * points[i][y])
    ordered = sorted(front, key=lambda i: DIRECTIONS[x] * points[i][x])
    xs = [DIRECTIONS[x] * points[i][x] for i in ordered]
    ys = [DIRECTIONS[y] * points[i][y] for i in ordered]

    def scale(v: list[float]) -> list[float]:
        lo, hi = min(v), max(v)
        return [(u - lo) / (hi - lo) if hi > lo else 0.0 for u in v]

    xs, ys = scale(xs), scale(ys)
    (x0, y0), (x1, y1) = (xs[0], ys[0]), (xs[-1], ys[-1])
    norm = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 or 1.0
    distance = [
        abs((y1 - y0) * u - (x1 - x0) * v + x1 * y0 - y1 * x0) / norm for u, v in zip(xs, ys)
    ]
    return ordered[max(range(len(ordered)), key=distance.__getitem__)]


def choose(
    points: Sequence[dict],
    *,
    max_params: int | None = None,
    min_speedup: float | None = None,
    quality: str = "quality",
) -> tuple[int, str]:
    """(index, rule): the best quality among points within the limits, or the knee of the
    quality/speedup front when no limit is given. Raises ValueError when none qualifies."""
    if not points:
        raise ValueError("no finished trial to choose from")
    if max_params is None and min_speedup is None:
        return knee(points, pareto_front(points, [quality, "speedup"]), y=quality), "knee"
    rule = " and ".join(
        part
        for part in (
            f"params <= {max_params:,}" if max_params is not None else "",
            f"speedup >= {min_speedup:g}" if min_speedup is not None else "",
        )
        if part
    )
    allowed = [
        i
        for i, p in enumerate(points)
        if (max_params is None or p["params"] <= max_params)
        and (min_speedup is None or p["speedup"] >= min_speedup)
    ]
    if not allowed:
        raise ValueError(f"no finished trial has {rule}")
    return max(allowed, key=lambda i: points[i][quality]), f"best {quality} with {rule}"
