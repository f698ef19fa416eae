"""Planning a request: the options to try, in order. A routed request (model ``bestroute`` or
``bestroute:<knob>``) is scored by the router and gets its decision rule's fallback order; a
request naming a backend gets that backend alone."""

import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .._exceptions import RouterError
from ..backends import Deadline
from ..data import arm_parts
from ..routers import Router
from ..selection import Option
from ._affinity import Affinity, Pin, Turn
from ._arms import Arms
from ._config import ExploreConfig, GuardConfig
from ._cpu import run_cpu
from ._errors import DeadlineExceeded, InvalidRequest, ModelNotFound
from ._metrics import GatewayMetrics
from ._screen import Screened
from .protocol import NO_CONSTRAINTS, ChatCompletionRequest, RequestConstraints

ROUTED_MODEL = "bestroute"


def is_routed(model: str) -> bool:
    """Whether a request's ``model`` asks the router (``bestroute`` or ``bestroute:<knob>``)."""
    return model == ROUTED_MODEL or model.startswith(ROUTED_MODEL + ":")


def _outside(constraints: RequestConstraints, models: set[str]) -> str | None:
    """Which of the client's model lists rules out an option calling ``models`` (None: neither).
    A backend's name stands for its arms too."""

    def named(model: str, names: list[str]) -> bool:
        return model in names or arm_parts(model)[0] in names

    allowed, excluded = constraints.allowed_models, constraints.excluded_models
    if allowed is not None and not all(named(m, allowed) for m in models):
        return "allowed_models"
    if excluded and any(named(m, excluded) for m in models):
        return "excluded_models"
    return None


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
    # Options the router could have taken that this request's needs or constraints ruled out,
    # and why; ``constraint``: the client's constraint that ruled out the router's own choice.
    excluded: Mapping[str, str] = field(default_factory=dict)
    constraint: str | None = None
    # The conversation this turn continues (None: affinity is off, or the plan is direct) and
    # what affinity did; the domain guard's reading of the prompt (distance None: no guard).
    turn: Turn | None = None
    affinity: Affinity | None = None
    domain_distance: float | None = None
    out_of_domain: bool = False
    screen: Screened | None = None  # what the safety screen did, when it flagged or could not judge

    def notes(self) -> list[str]:
        """What the plan says about itself in the decision log's notes: the exclusions (one per
        reason, naming its options), the domain guard's flag, affinity and the screen."""
        by_reason: dict[str, list[str]] = {}
        for label, reason in self.excluded.items():
            by_reason.setdefault(reason, []).append(label)
        notes = [f"excluded ({reason}): {', '.join(labels)}" for reason, labels in by_reason.items()]
        if self.out_of_domain:
            notes.append(f"out of domain (distance {self.domain_distance:.3f})")
        if self.affinity is not None:
            notes.append(self.affinity.note())
        if self.screen is not None:
            notes.append(f"screen {self.screen.note()}")
        return notes


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
        guard: GuardConfig | None = None,
    ) -> None:
        self.router, self.arms, self.default_knob, self.metrics = router, arms, default_knob, metrics
        self.pool, self.avoided = pool, avoided
        self.explore = explore or ExploreConfig()
        self.guard = guard or GuardConfig()
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
        self._on: dict[str, np.ndarray] = {}  # by pinned model: the options that answer with it
        # The backends each servable option calls, at any stage: all of them must take a request.
        self._backends = {
            int(o): sorted(
                {arms.get(m)[0].config for stage in router.options_[o].stages for m in stage.models},
                key=lambda b: b.name,
            )
            for o in np.flatnonzero(self._available)
        }
        self._sized = any(
            b.capabilities.context_tokens is not None or b.capabilities.max_output_tokens is not None
            for backends in self._backends.values()
            for b in backends
        )

    async def plan(
        self,
        request: ChatCompletionRequest,
        deadline: Deadline,
        constraints: RequestConstraints = NO_CONSTRAINTS,
        turn: Turn | None = None,
    ) -> Plan:
        self._check_names(constraints)
        if is_routed(request.model):
            if request.n != 1:
                raise InvalidRequest(
                    "routed requests return one choice; the router decides how many samples to draw", param="n"
                )
            return await self._route(request, self._knob(request.model), deadline, constraints, turn)
        resolved = self.arms.resolve(request.model)
        if resolved is None:
            raise ModelNotFound(
                f"model {request.model!r} does not exist; use 'bestroute', "
                "'bestroute:<threshold>', a configured backend or backend@strategy",
                param="model",
                code="model_not_found",
            )
        ruled_out = _outside(constraints, {request.model})
        if ruled_out is not None:
            raise InvalidRequest(
                f"model {request.model!r} is ruled out by the request's {ruled_out}",
                param="model",
                code="constraints_unmet",
            )
        refusal = resolved[0].config.refusal(request.needs)
        if refusal is not None:
            raise InvalidRequest(
                f"backend {resolved[0].name!r} cannot serve this request: {refusal}", param="model", code="not_capable"
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

    def _check_names(self, constraints: RequestConstraints) -> None:
        for name in ("allowed_models", "excluded_models"):
            for model in getattr(constraints, name) or ():
                if self.arms.resolve(model) is None:
                    raise InvalidRequest(
                        f"{name}: {model!r} is not a configured backend or arm", param=f"bestroute.{name}"
                    )

    async def _route(
        self,
        request: ChatCompletionRequest,
        knob: float,
        deadline: Deadline,
        constraints: RequestConstraints,
        turn: Turn | None,
    ) -> Plan:
        prompt = request.prompt_text
        try:
            scores, cost, distance, out_of_domain = await run_cpu(
                self.pool, len(prompt), lambda: self._assess(prompt), timeout=max(deadline.remaining(), 0.0)
            )
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while it was being routed") from None
        available, avoided = self._available, self.avoided()
        if avoided:  # shadow checks found these below target: the next option in the order answers
            available = available & np.array([o.label not in avoided for o in self.router.options_])
        excluded = self._excluded(request)
        available = self._without(available, excluded, "no option can serve this request", "not_capable")
        constrained = self._constrained(constraints, scores, cost) if constraints.given() else {}
        decided_by = None
        if constrained:
            unconstrained = self._rule.order(scores, knob, available, cost)[0]
            available = self._without(
                available, constrained, "no option meets the request's constraints", "constraints_unmet"
            )
            decided_by = constrained.get(unconstrained, "").split(" ", 1)[0] or None
            excluded |= constrained
        order = self._rule.order(scores, knob, available, cost)  # its first option is Router.decide's
        affinity = None
        reference = self.router.reference_index_
        if out_of_domain and self.guard.out_of_domain == "reference" and available[reference]:
            guarded = self.router.guarded(available[None, :], np.ones(1, dtype=bool), 1)
            assert guarded is not None
            to_reference = self._rule.order(scores, knob, guarded[0], cost)  # Router.decide's guard: the reference
            order = [*to_reference, *(o for o in order if o not in to_reference)]
            self.metrics.out_of_domain.labels(action="reference").inc()
        elif out_of_domain:
            self.metrics.out_of_domain.labels(action="flagged").inc()
        if turn is not None and turn.pin is not None and not (out_of_domain and order[0] == reference):
            order, affinity = self._affine(turn.pin, order, available, excluded, scores, cost, knob)
            self.metrics.affinity.labels(outcome=affinity.outcome).inc()
        options, values = self.router.options_, scores.tolist()
        choice = order[0]
        # exploration is the router's own choice only: never off a pinned model or the guard's reference
        steered = affinity is not None or (out_of_domain and choice == reference)
        first, propensity = (choice, 1.0) if steered else self._explored(choice, available)
        order = [first, *(o for o in order if o != first)]  # a failed explored option falls back as usual
        return Plan(
            attempts=tuple(Attempt(options[o], options[o].label) for o in order),
            threshold=knob,
            scores={label: round(values[o], 6) for label, o in self._labels},
            choice=options[choice].label,
            propensity=propensity,
            excluded={options[o].label: why for o, why in excluded.items()},
            constraint=decided_by,
            turn=turn,
            affinity=affinity,
            domain_distance=distance,
            out_of_domain=out_of_domain,
        )

    def _affine(
        self,
        pin: Pin,
        order: list[int],
        available: np.ndarray,
        excluded: dict[int, str],
        scores: np.ndarray,
        cost: np.ndarray,
        knob: float,
    ) -> tuple[list[int], Affinity]:
        """The order of a turn pinned to ``pin.model``: the decision rule among the options that
        answer with that model unless they escalate, and the reference (so the router can still
        escalate past it), then the rest as fallbacks; or the order as it was if none can serve it."""
        on_model = self._on_model(pin.model)
        servable = available & on_model
        if not servable.any():
            reasons = [excluded[int(o)] for o in np.flatnonzero(on_model) if int(o) in excluded]
            if reasons:
                reason = reasons[0]
            elif on_model.any():
                reason = "shadow checks avoid its options"
            else:
                reason = "no option of this router answers with it"
            return order, Affinity(pin.conversation, pin.model, "moved", reason)
        reference = np.zeros_like(available)
        reference[self.router.reference_index_] = available[self.router.reference_index_]
        pinned = self._rule.order(scores, knob, servable | reference, cost)
        outcome: Literal["kept", "escalated"] = "kept" if servable[pinned[0]] else "escalated"
        return [*pinned, *(o for o in order if o not in pinned)], Affinity(pin.conversation, pin.model, outcome)

    def _on_model(self, model: str) -> np.ndarray:
        """The servable options that answer with ``model`` unless they escalate to the reference:
        every stage calls only it."""
        if model not in self._on:
            self._on[model] = np.array(
                [
                    bool(self._available[o]) and all(set(stage.models) == {model} for stage in option.stages)
                    for o, option in enumerate(self.router.options_)
                ]
            )
        return self._on[model]

    def _without(self, available: np.ndarray, excluded: dict[int, str], failure: str, code: str) -> np.ndarray:
        """``available`` less the ``excluded`` options; a 400 (``failure``, ``code``) if none is left."""
        if not excluded:
            return available
        left = available.copy()
        left[list(excluded)] = False
        if not left.any():
            reasons = "; ".join(
                f"{self.router.options_[o].label}: {why}" for o, why in excluded.items() if available[o]
            )
            raise InvalidRequest(f"{failure} ({reasons})", code=code)
        return left

    def _constrained(self, constraints: RequestConstraints, scores: np.ndarray, cost: np.ndarray) -> dict[int, str]:
        """The servable options the client's constraints rule out, each with the constraint (and
        the figure) that did; ``cost``: the options' expected costs on this prompt."""
        found = {}
        for o in self._backends:
            option = self.router.options_[o]
            models = {m for stage in option.stages for m in stage.models}
            latency = self._latency_ms(o) if constraints.max_latency_ms is not None else None
            if (why := _outside(constraints, models)) is not None:
                found[o] = why
            elif constraints.max_cost_usd is not None and cost[o] > constraints.max_cost_usd:
                found[o] = f"max_cost_usd (expected ${cost[o]:.6g} a request)"
            elif (
                constraints.max_latency_ms is not None and latency is not None and latency > constraints.max_latency_ms
            ):
                found[o] = f"max_latency_ms (expected {latency:.0f} ms)"
            elif constraints.min_quality is not None and scores[o] < constraints.min_quality:
                found[o] = f"min_quality (predicted {scores[o]:.3f})"
        return found

    def _latency_ms(self, o: int) -> float | None:
        """An option's expected latency: its stages one after another, each as slow as its
        slowest backend's recent calls; None while a backend has answered no call yet."""
        total = 0.0
        for stage in self.router.options_[o].stages:
            seen = [self.arms.get(m)[0].latency_s for m in stage.models]
            if any(s is None for s in seen):
                return None
            total += max(s for s in seen if s is not None)
        return total * 1000

    def _excluded(self, request: ChatCompletionRequest) -> dict[int, str]:
        """The servable options this request cannot be sent to, with the first reason found."""
        needs = request.needs
        if not (needs.tools or needs.images or needs.json_output or needs.streaming or self._sized):
            return {}  # what every backend takes
        excluded = {}
        for o, backends in self._backends.items():
            for backend in backends:
                refusal = backend.refusal(needs)
                if refusal is not None:
                    excluded[o] = f"{backend.name}: {refusal}"
                    break
        return excluded

    def _explored(self, choice: int, available: np.ndarray) -> tuple[int, float]:
        """The option to try first and the probability it had: the router's choice, or with
        probability ``explore.rate`` one drawn uniformly from the choice and its ``width``
        neighbours on each side in mean cost among the servable options no costlier than the reference."""
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

    def _assess(self, prompt: str) -> tuple[np.ndarray, np.ndarray, float | None, bool]:
        """The prompt's scores and expected costs, its distance from the router's domain, and
        whether the guard flags it (``guard.out_of_domain`` off: it is not read)."""
        tic = time.perf_counter()
        assessed = self.router.assess([prompt], guard=self.guard.out_of_domain != "off")
        self.metrics.routing_seconds.observe(time.perf_counter() - tic)
        if assessed.distance is None:
            return assessed.scores[0], assessed.cost[0], None, False
        assert assessed.out_of_domain is not None
        distance = round(float(assessed.distance[0]), 6)
        return assessed.scores[0], assessed.cost[0], distance, bool(assessed.out_of_domain[0])
