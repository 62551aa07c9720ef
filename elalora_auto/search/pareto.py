"""The trade-off between quality and size: Pareto front, knee and 2-D hypervolume.

Points are (metric, cost): the metric is maximised (accuracy, F1, ...), the cost minimised (trainable
parameters). Works on plain numbers so the CLI table, the plots and the tests share one definition, whatever
the study's objective mode (a single-objective study still has a front over these two quantities).
"""

from __future__ import annotations

import math
from typing import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good in both and strictly better in one (higher metric, lower cost)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, ordered by cost (then metric, best first). Duplicates all stay."""
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def front_ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the points on the front, 1 for the front of the rest, and so on."""
    ranks, left, level = [0] * len(points), set(range(len(points))), 0
    while left:
        layer = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in layer:
            ranks[i] = level
        left, level = left - layer, level + 1
    return ranks


def knee(points: Sequence[Point]) -> int | None:
    """Index of the front point farthest from the line joining the front's two extremes (both axes scaled to
    [0, 1]): the point where paying more parameters stops buying much metric. With fewer than three distinct
    front points there is no bend; the best metric wins.
    """
    front = pareto_front(points)
    if not front:
        return None
    metrics = [points[i][0] for i in front]
    costs = [points[i][1] for i in front]
    m_span, c_span = (max(metrics) - min(metrics)) or 1.0, (max(costs) - min(costs)) or 1.0
    scaled = {i: ((points[i][0] - min(metrics)) / m_span, (points[i][1] - min(costs)) / c_span) for i in front}
    first, last = scaled[front[0]], scaled[front[-1]]
    dx, dy = last[0] - first[0], last[1] - first[1]
    norm = math.hypot(dx, dy) or 1.0

    def distance(i: int) -> float:
        x, y = scaled[i]
        return abs(dy * (x - first[0]) - dx * (y - first[1])) / norm

    return max(front, key=lambda i: (round(distance(i), 12), points[i][0], -points[i][1]))


def reference_point(points: Sequence[Point], baseline: float | None) -> Point:
    """The hypervolume reference used throughout: the majority-class baseline as the metric floor (just below the
    worst point when there is none) and 1.1 x the largest cost, so the largest point still adds area."""
    floor = baseline if baseline is not None else min(metric for metric, _ in points) - 1e-9
    return floor, 1.1 * max(cost for _, cost in points)


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by the points and bounded by `reference` (a metric floor, a cost ceiling).

    Points no better than the reference in both objectives add nothing. A larger value is a better front;
    comparable between studies only with the same reference (e.g. (majority-class accuracy, full fine-tune size)).
    """
    ref_metric, ref_cost = reference
    useful = [(m, c) for m, c in points if m > ref_metric and c < ref_cost]
    area, best_metric = 0.0, ref_metric
    for metric, cost in sorted(useful, key=lambda p: (p[1], -p[0])):  # sweep from cheapest up
        if metric > best_metric:
            area += (metric - best_metric) * (ref_cost - cost)
            best_metric = metric
    return area
