import math

import numpy as np
import pytest

from bestroute.evaluation import area_under_curve, cost_reduction_at_drop, quality_at_cost


def test_auc_of_a_step_curve():
    # Cost axis from 1 (cheapest) to 3 (reference): normalised x = (cost - 1) / 2.
    points = np.array([[1.0, 0.5], [2.0, 0.8], [3.0, 0.9], [5.0, 1.0]])
    # 0.5 on [0, 0.5), 0.8 on [0.5, 1), the point at x=1 has no width; the one past the
    # reference is off the axis.
    assert math.isclose(area_under_curve(points, cheapest_cost=1.0, reference_cost=3.0), 0.5 * 0.5 + 0.5 * 0.8)


def test_auc_uses_best_quality_so_far_and_zero_before_the_first_point():
    points = np.array([[2.0, 0.9], [2.5, 0.6]])
    # Nothing below x = 0.5, then 0.9 (the later, worse point does not lower it).
    assert math.isclose(area_under_curve(points, cheapest_cost=1.0, reference_cost=3.0), 0.5 * 0.9)
    matching = np.array([[1.0, 0.7]])
    assert math.isclose(area_under_curve(matching, cheapest_cost=1.0, reference_cost=3.0), 0.7)
    with pytest.raises(ValueError):
        area_under_curve(points, cheapest_cost=3.0, reference_cost=3.0)


def test_cost_reduction_at_one_percent_drop():
    points = np.array([[0.2, 0.90], [0.5, 0.992], [1.0, 1.0]])
    assert math.isclose(cost_reduction_at_drop(points, reference_quality=1.0, reference_cost=1.0), 0.5)
    assert cost_reduction_at_drop(points[:1], reference_quality=1.0, reference_cost=1.0) == 0.0
    # At 0.99 x 0.9 = 0.891, the cheapest point qualifies.
    assert math.isclose(cost_reduction_at_drop(points, reference_quality=0.9, reference_cost=1.0), 0.8)


def test_quality_at_reference_cost():
    points = np.array([[0.2, 0.90], [0.9, 0.95], [1.0, 0.97], [1.1, 0.99]])
    assert quality_at_cost(points, max_cost=1.0) == 0.97
    assert math.isnan(quality_at_cost(points, max_cost=0.1))
