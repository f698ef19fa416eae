"""Routers: BEST-Route and the baselines, one interface (fit / predict / decide / save / load)."""

from ._base import Decisions, Router, choose_reference, load_router
from ._baselines import (
    CascadeRouter,
    KNNRouter,
    MFRouter,
    NClassRouter,
    NLabelRouter,
    OracleRouter,
    RandomRouter,
)
from ._best_route import BestRouteRouter, EscalatingBestRouteRouter
from ._heads import apply_heads, fit_soft_heads
from ._registry import ROUTERS
from ._selection import (
    Consensus,
    MajorityVote,
    Option,
    OptionOutcomes,
    OracleSelector,
    SelectionCache,
    extract_answer,
    make_selector,
    option_outcomes,
    pick,
    pick_confidence,
    selected_quality,
    soft_labels,
    stage_draws,
    stage_samples,
    stage_verdict,
)

__all__ = [
    "ROUTERS",
    "BestRouteRouter",
    "CascadeRouter",
    "Consensus",
    "Decisions",
    "EscalatingBestRouteRouter",
    "KNNRouter",
    "MFRouter",
    "MajorityVote",
    "NClassRouter",
    "NLabelRouter",
    "Option",
    "OptionOutcomes",
    "OracleRouter",
    "OracleSelector",
    "RandomRouter",
    "Router",
    "SelectionCache",
    "apply_heads",
    "choose_reference",
    "extract_answer",
    "fit_soft_heads",
    "load_router",
    "make_selector",
    "option_outcomes",
    "pick",
    "pick_confidence",
    "selected_quality",
    "soft_labels",
    "stage_draws",
    "stage_samples",
    "stage_verdict",
]
