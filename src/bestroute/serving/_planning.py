"""Planning a request: the options to try, in order. A routed request (model ``bestroute`` or
``bestroute:<knob>``) is scored by the router and gets its decision rule's fallback order; a
request naming a backend gets that backend alone."""

import time
from dataclasses import dataclass, field

import numpy as np

from .._exceptions import RouterError
from ..backends import Upstream
from ..routers import Router
from ..selection import Option
from ._errors import InvalidRequest, ModelNotFound
from ._metrics import GatewayMetrics
from .protocol import ChatCompletionRequest

ROUTED_MODEL = "bestroute"


@dataclass
class Attempt:
    """One option to try: a backend and how many samples to draw from it. A mixture or escalating
    ``option`` draws from each of its models (``upstream`` is then the one whose answer is kept)."""

    upstream: Upstream
    n: int
    label: str
    option: Option | None = None


@dataclass
class Plan:
    attempts: list[Attempt]
    threshold: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    routed: bool = True


class Planner:
    """Plans requests for one router and set of backends.

    Parameters
    ----------
    router : Router
        The fitted router; its ``rule`` gives the decision and the fallback order.
    upstreams : dict
        The backends by name.
    default_knob : float
        The knob of a request to plain ``bestroute``.
    metrics : GatewayMetrics
        Where the time spent routing is observed.
    """

    def __init__(
        self, *, router: Router, upstreams: dict[str, Upstream], default_knob: float, metrics: GatewayMetrics
    ) -> None:
        self.router, self.upstreams, self.default_knob, self.metrics = router, upstreams, default_knob, metrics
        # Options the gateway can serve: active in the router, each of its models has a backend
        # that allows that many samples.
        self._available = router.active_ & np.array(
            [
                all(m in upstreams and o.stages[-1].n <= upstreams[m].config.max_n for m in o.stages[-1].models)
                for o in router.options_
            ]
        )
        self._labels = [(router.options_[o].label, int(o)) for o in np.flatnonzero(self._available)]
        self._rule = router.rule

    def plan(self, request: ChatCompletionRequest) -> Plan:
        if request.model == ROUTED_MODEL or request.model.startswith(ROUTED_MODEL + ":"):
            if request.n != 1:
                raise InvalidRequest(
                    "routed requests return one choice; the router decides how many samples to draw", param="n"
                )
            return self._route(request, self._knob(request.model))
        upstream = self.upstreams.get(request.model)
        if upstream is None:
            raise ModelNotFound(
                f"model {request.model!r} does not exist; use 'bestroute', "
                "'bestroute:<threshold>' or a configured backend",
                param="model",
                code="model_not_found",
            )
        if not 1 <= request.n <= upstream.config.max_n:
            raise InvalidRequest(f"n must be between 1 and {upstream.config.max_n} for {upstream.name}", param="n")
        return Plan(attempts=[Attempt(upstream, request.n, upstream.name)], routed=False)

    def _knob(self, model: str) -> float:
        if model == ROUTED_MODEL:
            return self.default_knob
        raw = model.split(":", 1)[1]
        try:
            knob = float(raw)
        except ValueError:
            raise InvalidRequest(f"threshold {raw!r} in model name is not a number", param="model") from None
        try:
            return self._rule.check(knob)
        except RouterError as error:
            raise InvalidRequest(str(error), param="model") from None

    def _route(self, request: ChatCompletionRequest, knob: float) -> Plan:
        tic = time.perf_counter()
        scores = self.router.predict([request.prompt_text()])[0]
        order = self._rule.order(scores, knob, self._available)  # its first option is Router.decide's
        self.metrics.routing_seconds.observe(time.perf_counter() - tic)
        options, values = self.router.options_, scores.tolist()
        return Plan(
            attempts=[
                Attempt(
                    self.upstreams[options[o].models[0]],
                    options[o].n,
                    options[o].label,
                    options[o] if options[o].composite else None,
                )
                for o in order
            ],
            threshold=knob,
            scores={label: round(values[o], 6) for label, o in self._labels},
        )
