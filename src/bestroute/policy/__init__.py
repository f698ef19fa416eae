"""Policy: turning router scores and a knob (threshold or cost penalty) into decisions, and
estimating from logged traffic what another policy's decisions would have given."""

from ._decisions import PENALTY_GRID, THRESHOLD_GRID, DecisionRule, best_value, cheapest_above, fallback_order
from ._offpolicy import Estimate, OffPolicyAccumulator, OffPolicyEstimates, off_policy_estimates
from ._operating import OperatingPoint, choose_knob, table_from_json, table_to_json

__all__ = [
    "PENALTY_GRID",
    "THRESHOLD_GRID",
    "DecisionRule",
    "Estimate",
    "OffPolicyAccumulator",
    "OffPolicyEstimates",
    "OperatingPoint",
    "best_value",
    "cheapest_above",
    "choose_knob",
    "fallback_order",
    "off_policy_estimates",
    "table_from_json",
    "table_to_json",
]
