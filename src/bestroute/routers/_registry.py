"""Routers by the names used on the CLI and in results, in the order `bestroute eval` runs them,
and loading any of them from its artifact."""

from pathlib import Path

from .._artifact import read_artifact
from .._exceptions import ArtifactError
from ._base import ARTIFACT_VERSION, Router
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


def load_router(path: str | Path) -> Router:
    """Load any router saved with :meth:`Router.save`."""
    document, arrays = read_artifact(path, "bestroute router")
    if "router" not in document:
        # another kind of bestroute artifact (a reward model has "kind"): say what it is, not
        # a version mismatch that suggests an upgrade
        kind = str(document.get("kind", "unknown"))
        hint = "; a reward model is a selector: --selector reward-model:PATH" if "reward-model" in kind else ""
        raise ArtifactError(f"{path}: not a router artifact (it is a {kind} artifact){hint}")
    if document.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(
            f"{path}: artifact version {document.get('version')} is not supported "
            f"(this bestroute reads version {ARTIFACT_VERSION})"
        )
    if document.get("router") not in ROUTERS:
        raise ArtifactError(f"{path}: unknown router {document.get('router')!r}")
    return ROUTERS[document["router"]]._load(document, arrays)
