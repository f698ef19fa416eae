"""Cost-quality curve metrics (definitions in docs/evaluation.md)."""

import numpy as np


def area_under_curve(points: np.ndarray, *, cheapest_cost: float, reference_cost: float) -> float:
    """Area under the best-quality-so-far step function of a cost-quality curve, on a cost axis
    normalised to [0, 1] from ``cheapest_cost`` to ``reference_cost``.

    ``points`` is (K, 2) of (cost, quality). At normalised cost x the curve's value is the best
    quality of its points costing <= x (0 where none does); points costing more than the
    reference are outside the axis. A router that matches the reference at the cheapest
    model's cost scores the reference's quality.
    """
    span = reference_cost - cheapest_cost
    if span <= 0:
        raise ValueError("the reference must cost more than the cheapest model")
    x = np.clip((points[:, 0] - cheapest_cost) / span, 0.0, None)
    inside = x <= 1.0 + 1e-12
    if not inside.any():
        return 0.0
    x, quality = x[inside], points[inside, 1]
    order = np.argsort(x, kind="stable")
    x, best = x[order], np.maximum.accumulate(quality[order])
    widths = np.diff(np.r_[x, 1.0])
    return float(np.sum(widths * best))


def cost_reduction_at_drop(
    points: np.ndarray, *, reference_quality: float, reference_cost: float, drop: float = 0.01
) -> float:
    """1 - (lowest cost of a point with quality >= (1 - drop) x reference quality) / reference cost;
    0 when no point qualifies."""
    good = points[points[:, 1] >= (1.0 - drop) * reference_quality - 1e-12]
    if not len(good):
        return 0.0
    return float(max(0.0, 1.0 - good[:, 0].min() / reference_cost))


def quality_at_cost(points: np.ndarray, *, max_cost: float) -> float:
    """Highest quality of a point costing <= ``max_cost``; NaN when none does."""
    affordable = points[points[:, 0] <= max_cost * (1 + 1e-9)]
    return float(affordable[:, 1].max()) if len(affordable) else float("nan")
