"""Planning a request: the options to try, in order. A routed request (model ``bestroute`` or
``bestroute:<knob>``) is scored by the router and gets its decision rule's fallback order; a
request naming a backend gets that backend alone."""

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .._exceptions import RouterError
from ..backends import Deadline
from ..routers import Router
from ..selection import Option
from ._arms import Arms
from ._config import ExploreConfig
from ._cpu import run_cpu
from ._errors import DeadlineExceeded, InvalidRequest, ModelNotFound
from ._metrics import GatewayMetrics
from .protocol import ChatCompletionRequest

ROUTED_MODEL = "bestroute"


@dataclass(frozen=True)
class Attempt:
    """One option to try, under the name the response and the log give it (a routed option's
    label, or the backend a request names)."""

    option: Option
    label: str


@dataclass(frozen=True)
class Plan:
    """The options a request tries, in order, and why: the knob and every servable option's score."""

    attempts: tuple[Attempt, ...]
    threshold: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    routed: bool = True
    # A routed plan: the router's own choice, and the probability the first attempt's option
    # was planned with (1 without exploration).
    choice: str | None = None
    propensity: float | None = None


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
    pool : Executor
        Where the router scores a long prompt (features and heads), off the event loop.
    avoided : callable
        The labels of options not to route to now (shadow checks found them below target).
    """

    def __init__(
        self,
        *,
        router: Router,
        arms: Arms,
        default_knob: float,
        metrics: GatewayMetrics,
        pool: Executor,
        avoided: Callable[[], frozenset[str]] = frozenset,
        explore: ExploreConfig | None = None,
    ) -> None:
        self.router, self.arms, self.default_knob, self.metrics = router, arms, default_knob, metrics
        self.pool, self.avoided = pool, avoided
        self.explore = explore or ExploreConfig()
        self._rng = random.Random(self.explore.seed)
        cost = router.option_cost_
        # Exploration's cost order, made once: every option, cheapest first.
        self._by_cost = sorted(range(len(router.options_)), key=lambda o: (cost[o], o))
        # Options the gateway can serve: active in the router, each of its models (backends or
        # backend@strategy arms) is configured and its backend allows that many samples.
        self._available = router.active_ & np.array(
            [all(arms.serves(m, o.stages[-1].n) for m in o.stages[-1].models) for o in router.options_]
        )
        self._labels = [(router.options_[o].label, int(o)) for o in np.flatnonzero(self._available)]
        self._rule = router.rule

    async def plan(self, request: ChatCompletionRequest, deadline: Deadline) -> Plan:
        if request.model == ROUTED_MODEL or request.model.startswith(ROUTED_MODEL + ":"):
            if request.n != 1:
                raise InvalidRequest(
                    "routed requests return one choice; the router decides how many samples to draw", param="n"
                )
            knob = self._knob(request.model)
            try:
                async with asyncio.timeout(max(deadline.remaining(), 0.0)):
                    return await self._route(request, knob)
            except TimeoutError:
                raise DeadlineExceeded("the request's deadline passed while it was being routed") from None
        resolved = self.arms.resolve(request.model)
        if resolved is None:
            raise ModelNotFound(
                f"model {request.model!r} does not exist; use 'bestroute', "
                "'bestroute:<threshold>', a configured backend or backend@strategy",
                param="model",
                code="model_not_found",
            )
        max_n = resolved[0].config.max_n
        if not 1 <= request.n <= max_n:
            raise InvalidRequest(f"n must be between 1 and {max_n} for {request.model}", param="n")
        return Plan(attempts=(Attempt(Option(request.model, request.n), request.model),), routed=False)

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

    async def _route(self, request: ChatCompletionRequest, knob: float) -> Plan:
        prompt = request.prompt_text()
        scores = await run_cpu(self.pool, len(prompt), lambda: self._scores(prompt))
        available, avoided = self._available, self.avoided()
        if avoided:  # shadow checks found these below target: the next option in the order answers
            available = available & np.array([o.label not in avoided for o in self.router.options_])
        order = self._rule.order(scores, knob, available)  # its first option is Router.decide's
        options, values = self.router.options_, scores.tolist()
        choice = order[0]
        first, propensity = self._explored(choice, available)
        order = [first, *(o for o in order if o != first)]  # a failed explored option falls back as usual
        return Plan(
            attempts=tuple(Attempt(options[o], options[o].label) for o in order),
            threshold=knob,
            scores={label: round(values[o], 6) for label, o in self._labels},
            choice=options[choice].label,
            propensity=propensity,
        )

    def _explored(self, choice: int, available: np.ndarray) -> tuple[int, float]:
        """The option to try first and the probability it had: the router's choice, or with
        probability ``explore.rate`` one drawn uniformly from the choice and its ``width``
        neighbours on each side in cost among the servable options no costlier than the reference."""
        rate = self.explore.rate
        if not rate:
            return choice, 1.0
        cost = self.router.option_cost_
        limit = cost[self.router.reference_index_]
        # the choice itself is never excluded
        ranked = [o for o in self._by_cost if o == choice or (available[o] and cost[o] <= limit)]
        at = ranked.index(choice)
        candidates = ranked[max(0, at - self.explore.width) : at + self.explore.width + 1]
        share = rate / len(candidates)
        first = self._rng.choice(candidates) if self._rng.random() < rate else choice
        return int(first), share + (1 - rate) * (first == choice)

    def _scores(self, prompt: str) -> np.ndarray:
        tic = time.perf_counter()
        scores = self.router.predict([prompt])[0]
        self.metrics.routing_seconds.observe(time.perf_counter() - tic)
        return scores
