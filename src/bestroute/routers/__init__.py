"""Routers: BEST-Route and the baselines, one interface (fit / predict / decide / save / load)."""

from ._base import Assessment, Decisions, Router, choose_reference
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
from ._onboarding import CAUTION, MIN_CALIBRATION_PROMPTS, onboard, remove, representative_prompts
from ._registry import ROUTERS, load_router

__all__ = [
    "CAUTION",
    "MIN_CALIBRATION_PROMPTS",
    "ROUTERS",
    "Assessment",
    "BestRouteRouter",
    "CascadeRouter",
    "Decisions",
    "EscalatingBestRouteRouter",
    "KNNRouter",
    "MFRouter",
    "NClassRouter",
    "NLabelRouter",
    "OracleRouter",
    "RandomRouter",
    "Router",
    "choose_reference",
    "load_router",
    "onboard",
    "remove",
    "representative_prompts",
]
