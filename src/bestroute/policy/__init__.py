"""Policy: turning router scores and a knob (threshold or cost penalty) into decisions."""

from ._decisions import PENALTY_GRID, THRESHOLD_GRID, DecisionRule, best_value, cheapest_above, fallback_order
from ._operating import OperatingPoint, choose_knob, table_from_json, table_to_json

__all__ = [
    "PENALTY_GRID",
    "THRESHOLD_GRID",
    "DecisionRule",
    "OperatingPoint",
    "best_value",
    "cheapest_above",
    "choose_knob",
    "fallback_order",
    "table_from_json",
    "table_to_json",
]
