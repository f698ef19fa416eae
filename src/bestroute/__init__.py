"""bestroute: route each LLM request to a model and a number of samples (BEST-Route)."""

from ._exceptions import (
    ArtifactError,
    BestRouteError,
    ConfigError,
    DataError,
    FeatureError,
    RouterError,
)
from .data import RoutingDataset, load_dataset, split_prompts
from .evaluation import evaluate
from .routers import (
    ROUTERS,
    BestRouteRouter,
    EscalatingBestRouteRouter,
    Router,
    load_router,
    onboard,
    remove,
)
from .selection import Option, SelectorSpec

__version__ = "0.1.0"

__all__ = [
    "ROUTERS",
    "ArtifactError",
    "BestRouteError",
    "BestRouteRouter",
    "ConfigError",
    "DataError",
    "EscalatingBestRouteRouter",
    "FeatureError",
    "Option",
    "Router",
    "RouterError",
    "RoutingDataset",
    "SelectorSpec",
    "evaluate",
    "load_dataset",
    "load_router",
    "onboard",
    "remove",
    "split_prompts",
]
