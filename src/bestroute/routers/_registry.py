"""Routers by the names used on the CLI and in results, in the order `bestroute eval` runs them."""

from ._base import Router
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

ROUTERS: dict[str, type[Router]] = {
    r.name: r
    for r in (
        BestRouteRouter,
        EscalatingBestRouteRouter,
        NLabelRouter,
        NClassRouter,
        KNNRouter,
        MFRouter,
        CascadeRouter,
        RandomRouter,
        OracleRouter,
    )
}
