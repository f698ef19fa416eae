"""Loading what the gateway serves: the configuration, its router artifact and its selector,
checked against each other. Any problem is a one-line BestRouteError."""

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError
from ..data import arm_parts
from ..reward import load_selector
from ..routers import Router, load_router
from ..selection import IN_PROCESS, Selector, SelectorSpec
from ._config import GatewayConfig


@dataclass(frozen=True)
class ArtifactInfo:
    """Which router artifact is serving: its path, a digest of its bytes, and when it was loaded."""

    path: Path
    sha256: str
    loaded_at: str

    @classmethod
    def of(cls, path: Path) -> "ArtifactInfo":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(path, digest, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def describe(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256[:16], "loaded_at": self.loaded_at}


@dataclass(frozen=True)
class Loaded:
    """A configuration with its router and selector, checked and loaded."""

    config: GatewayConfig
    router: Router
    in_process_selector: Selector | None  # loaded before start-up; None for a service kind
    backend_keys: dict[str, str | None]
    artifact: ArtifactInfo


def load_serving(config: GatewayConfig) -> Loaded:
    """Load and check what ``config`` serves; any problem is a one-line BestRouteError."""
    if config.router is None:
        raise ConfigError("the configuration names no router artifact (key: router)")
    artifact = config.router
    router = load_router(artifact)
    if not router.servable:
        raise ConfigError(f"router {router.name!r} cannot serve requests; train best-route or another router")
    backends = {b.name for b in config.backends}
    strategies = {s.name for s in config.strategies}
    reference_problem = arm_problem(router.reference_.model, backends, strategies)
    if reference_problem:
        raise ConfigError(f"the router's reference model {router.reference_.model!r} {reference_problem}")
    active = [o for o, on in zip(router.options_, router.active_, strict=True) if on]
    for option in active:
        for model in option.stages[-1].models:
            problem = arm_problem(model, backends, strategies)
            if problem and option.stages[-1].mix:
                raise ConfigError(f"the router's option {option.label!r} mixes {model!r}, which {problem}")
            if problem and arm_parts(model)[0] in backends:  # a strategy is missing, not the backend
                raise ConfigError(f"the router's option {option.label!r} uses {model!r}, which {problem}")
    if config.threshold is not None and router.knob == "threshold" and config.threshold > 1:
        raise ConfigError(
            f"threshold: {config.threshold:g} is not between 0 and 1 (router {router.name!r} "
            "routes on a predicted-quality threshold)"
        )
    shadow = config.shadow.against or router.reference_.model
    shadow_problem = arm_problem(shadow, backends, strategies) if config.shadow.rate else None
    if shadow_problem:
        raise ConfigError(f"shadow.against: {shadow!r} {shadow_problem}")
    trained_with = _selector_of(router)
    if "selector" not in config.model_fields_set:
        config = config.model_copy(update={"selector": trained_with})
    escalating = [o for o in active if o.judged]
    if escalating and config.selector != trained_with:
        raise ConfigError(
            f"the router's option {escalating[0].label!r} escalates on the confidence of the selector "
            f"it was trained with ({router.selector}); the configuration's selector "
            f"({config.selector.kind}) would make its thresholds meaningless: remove `selector`"
        )
    in_process = load_selector(config.selector) if config.selector.kind in IN_PROCESS else None
    backend_keys = {b.name: b.api_key() for b in config.backends}  # a missing variable fails here
    return Loaded(config, router, in_process, backend_keys, ArtifactInfo.of(artifact))


def arm_problem(arm: str, backends: set[str], strategies: set[str]) -> str | None:
    """Why ``arm`` (a backend, or backend@strategy) cannot be served, or None."""
    backend, strategy = arm_parts(arm)
    if backend not in backends:
        return "has no backend"
    if strategy is not None and strategy not in strategies:
        return f"needs strategy {strategy!r}, which the configuration does not define (key: strategies)"
    return None


def _selector_of(router: Router) -> SelectorSpec:
    """The selector the router's labels were estimated with, where the gateway can run it: best
    of n is then picked online the way it was scored offline (the oracle bound cannot run:
    consensus)."""
    spec = SelectorSpec.parse(router.selector)
    if spec.path is not None and not spec.path.is_file():
        raise ConfigError(
            f"the router was trained with the reward model {spec.path}, which does not exist; "
            "restore it or set `selector` in the configuration"
        )
    return SelectorSpec() if spec.kind == "oracle" else spec
