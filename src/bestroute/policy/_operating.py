"""Operating points people can read: what each knob value led to on validation."""

import math
from dataclasses import asdict, dataclass

from .._exceptions import RouterError


@dataclass(frozen=True)
class OperatingPoint:
    knob: float
    quality: float
    relative_quality: float  # quality / reference quality
    cost_per_1k: float


def choose_knob(
    table: list[OperatingPoint], *, min_relative_quality: float | None = None, max_cost_per_1k: float | None = None
) -> OperatingPoint:
    """The cheapest point reaching ``min_relative_quality``, or the best point costing at most
    ``max_cost_per_1k`` (both given: the cheapest point meeting both)."""
    if min_relative_quality is None and max_cost_per_1k is None:
        raise RouterError("give a target: minimum relative quality or maximum cost per 1k prompts")
    if min_relative_quality is not None and not (math.isfinite(min_relative_quality) and min_relative_quality > 0):
        raise RouterError(
            f"the minimum relative quality must be a number above 0 (0.99: 99%), got {min_relative_quality}"
        )
    if max_cost_per_1k is not None and not (math.isfinite(max_cost_per_1k) and max_cost_per_1k >= 0):
        raise RouterError(f"the maximum cost per 1k prompts must be a number of USD >= 0, got {max_cost_per_1k}")
    fits = [
        p
        for p in table
        if (min_relative_quality is None or p.relative_quality >= min_relative_quality)
        and (max_cost_per_1k is None or p.cost_per_1k <= max_cost_per_1k)
    ]
    if not fits:
        raise RouterError(
            "no operating point on validation meets the target "
            f"(quality >= {min_relative_quality}, cost <= {max_cost_per_1k}); "
            "run `bestroute explain` to see the table"
        )
    if min_relative_quality is not None:
        return min(fits, key=lambda p: (p.cost_per_1k, -p.quality))
    return max(fits, key=lambda p: (p.quality, -p.cost_per_1k))


def table_to_json(table: list[OperatingPoint]) -> list[dict[str, float]]:
    return [asdict(p) for p in table]


def table_from_json(rows: list[dict[str, float]]) -> list[OperatingPoint]:
    return [OperatingPoint(**row) for row in rows]
