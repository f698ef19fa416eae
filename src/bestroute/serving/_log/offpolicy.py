"""Off-policy evaluation of a candidate router on the gateway's logged traffic (`bestroute log
evaluate`): the candidate decides every logged routed prompt again, and its quality and cost are
estimated from the rows whose planned option it would have taken, weighted by their logged
propensities (``policy.off_policy_estimates``). Quality comes from feedback, else from the
request's shadow check (agreement with the reference), else is 1 where the reference answered;
cost is each row's."""

import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Float, cast, func, select

from ..._exceptions import BestRouteError, ConfigError
from ...policy import OffPolicyEstimates, off_policy_estimates
from ...routers import Router, load_router
from .._config import GatewayConfig
from .._loading import arm_problem
from .database import open_database
from .schema import decisions, feedback, shadows

# Fewer matched rows than this (or a smaller effective sample size) cannot carry an estimate.
MIN_OVERLAP = 10


@dataclass(frozen=True)
class LogEvaluation:
    """A candidate's estimated quality and cost per 1k requests on the logged routed traffic,
    beside what the logged traffic itself got."""

    candidate: str
    knob: float
    rows: int  # routed, answered by the option planned first, with propensity and prompt
    labelled: int  # of them, with feedback or a shadow check
    quality: OffPolicyEstimates
    cost_per_1k: OffPolicyEstimates
    logged_quality: float
    logged_cost_per_1k: float


@dataclass(frozen=True)
class _Logged:
    prompts: list[str]
    planned: list[str]
    propensity: np.ndarray
    cost: np.ndarray
    quality: np.ndarray  # NaN where the row has neither feedback nor a shadow check


def evaluate_log(
    config: GatewayConfig,
    candidate_path: str,
    *,
    min_quality: float | None = None,
    knob: float | None = None,
    since: float = 0.0,
) -> LogEvaluation:
    """Estimate the router at ``candidate_path`` on ``config``'s decision log from ``since`` on,
    at ``knob``, else ``min_quality``'s knob, else its default; a BestRouteError says why the log
    cannot support an estimate."""
    candidate = load_router(candidate_path)
    servable = _servable(candidate, config)
    logged = _read(config, candidate.reference_.label, since)
    if knob is None:
        knob = (
            candidate.knob_for(min_relative_quality=min_quality)
            if min_quality is not None
            else candidate.default_knob()
        )
    assessed = candidate.assess(logged.prompts)
    scores = assessed.scores
    # as this gateway would serve it: only the options it can, the out-of-domain prompts to the reference
    chosen = candidate.decide(scores, knob, np.broadcast_to(servable, scores.shape), assessed.out_of_domain)
    index = {option.label: o for o, option in enumerate(candidate.options_)}
    matched = np.array([candidate.options_[c].label == p for c, p in zip(chosen, logged.planned, strict=True)])
    at_logged = np.array([index.get(p, -1) for p in logged.planned])
    known = at_logged >= 0  # the direct model needs the candidate to have the logged option
    rows = np.arange(len(chosen))
    predicted = {
        "quality": (np.where(known, scores[rows, np.maximum(at_logged, 0)], np.nan), scores[rows, chosen]),
        "cost": (
            np.where(known, candidate.option_cost_[np.maximum(at_logged, 0)], np.nan),
            candidate.option_cost_[chosen],
        ),
    }
    labelled = ~np.isnan(logged.quality)
    _check_overlap(matched[labelled], logged.propensity[labelled], "quality")
    quality = _estimates(logged.quality, logged.propensity, matched, predicted["quality"], labelled)
    cost = _estimates(logged.cost * 1000, logged.propensity, matched, _scaled(predicted["cost"]), np.ones_like(matched))
    return LogEvaluation(
        candidate=candidate.name,
        knob=float(knob),
        rows=len(chosen),
        labelled=int(labelled.sum()),
        quality=quality,
        cost_per_1k=cost,
        logged_quality=float(np.nanmean(logged.quality)),
        logged_cost_per_1k=float(logged.cost.mean() * 1000),
    )


def _scaled(predicted: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return predicted[0] * 1000, predicted[1] * 1000


def _estimates(
    reward: np.ndarray,
    propensity: np.ndarray,
    matched: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
) -> OffPolicyEstimates:
    logged_prediction, candidate_prediction = predicted[0][rows], predicted[1][rows]
    direct = not np.isnan(logged_prediction).any()
    return off_policy_estimates(
        reward[rows],
        propensity[rows],
        matched[rows],
        predicted_logged=logged_prediction if direct else None,
        predicted_candidate=candidate_prediction if direct else None,
    )


def _servable(candidate: Router, config: GatewayConfig) -> np.ndarray:
    """Which of the candidate's options this gateway could serve (an option of a model without a
    backend is never chosen, as in the gateway); ConfigError if its reference is not one."""
    backends = {b.name for b in config.backends}
    strategies = {s.name for s in config.strategies}

    def served(model: str) -> bool:
        return arm_problem(model, backends, strategies) is None

    reference = candidate.reference_.model
    if not served(reference):
        raise ConfigError(
            f"the candidate's reference {reference!r} has no backend in this gateway: it was trained for "
            "other models than the logged traffic's"
        )
    return candidate.active_ & np.array([all(served(m) for m in o.stages[-1].models) for o in candidate.options_])


def _check_overlap(matched: np.ndarray, propensity: np.ndarray, what: str) -> None:
    weights = matched / propensity
    size = float(weights.sum() ** 2 / (weights**2).sum()) if weights.sum() else 0.0
    if matched.sum() < MIN_OVERLAP or size < MIN_OVERLAP:
        raise BestRouteError(
            f"the log cannot support an estimate of the candidate's {what}: {int(matched.sum())} labelled "
            f"requests took the option it chooses (effective sample size {size:.1f}, at least {MIN_OVERLAP} "
            "needed); log more traffic with explore.rate, feedback or shadow checks"
        )


def _read(config: GatewayConfig, reference: str, since: float) -> _Logged:
    """The routed answered requests logged from ``since`` on. A request's quality is its mean
    feedback, else its shadow check's agreement with the reference, else 1 where the reference
    itself answered (its agreement with itself), else unknown."""
    d = decisions
    quality = select(feedback.c.decision_id, func.avg(feedback.c.quality).label("q")).group_by(feedback.c.decision_id)
    agreed = (
        select(shadows.c.decision_id, func.avg(cast(shadows.c.agreed, Float)).label("a"))
        .where(shadows.c.agreed.is_not(None))
        .group_by(shadows.c.decision_id)
    )
    fq, sa = quality.subquery(), agreed.subquery()
    query = (
        select(d.c.prompt, d.c.planned_option, d.c.option, d.c.propensity, d.c.cost_usd, fq.c.q, sa.c.a)
        .select_from(d.outerjoin(fq, fq.c.decision_id == d.c.id).outerjoin(sa, sa.c.decision_id == d.c.id))
        .where(d.c.threshold.is_not(None), d.c.status == 200, d.c.created_at >= since)
    )
    engine = open_database(config.decision_log.url)
    try:
        with engine.connect() as connection:
            found = connection.execute(query).all()
    finally:
        engine.dispose()
    if not found:
        raise BestRouteError("the decision log has no answered routed requests to evaluate a candidate on")
    with_propensity = [r for r in found if r.propensity is not None and r.planned_option is not None]
    if not with_propensity:
        raise BestRouteError(
            "the decision log has no propensities (its rows are from before the gateway logged them): "
            "serve with this version, ideally with explore.rate, and evaluate that traffic"
        )
    usable = [r for r in with_propensity if r.prompt is not None and r.option == r.planned_option]
    if not usable:
        raise BestRouteError(
            "no logged request has a stored prompt answered by the option planned first; turn on "
            "decision_log.store_prompts"
        )
    return _Logged(
        prompts=[r.prompt for r in usable],
        planned=[r.planned_option for r in usable],
        propensity=np.array([r.propensity for r in usable], dtype=float),
        cost=np.array([r.cost_usd for r in usable], dtype=float),
        quality=np.array([_quality(r.q, r.a, r.option == reference) for r in usable], dtype=float),
    )


def _quality(feedback: float | None, agreement: float | None, by_reference: bool) -> float:
    if feedback is not None:
        return float(feedback)
    if agreement is not None:
        return float(agreement)
    return 1.0 if by_reference else math.nan
