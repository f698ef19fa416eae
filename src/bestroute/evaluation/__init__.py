"""Offline evaluation: cost-quality curves, their metrics and the figure."""

from ._metrics import area_under_curve, cost_reduction_at_drop, quality_at_cost
from ._runner import DEFAULT_ROUTERS, evaluate, markdown_table, write_results

__all__ = [
    "DEFAULT_ROUTERS",
    "area_under_curve",
    "cost_reduction_at_drop",
    "evaluate",
    "markdown_table",
    "quality_at_cost",
    "write_results",
]
