"""Off-policy evaluation of a candidate router on the gateway's logged traffic (`bestroute log
evaluate`): the candidate decides every logged routed prompt again, and its quality and cost are
estimated from the rows whose planned option it would have taken, weighted by their logged
propensities (``policy.off_policy_estimates``). Quality comes from feedback, else from the
request's shadow check (agreement with the reference), else is 1 where the reference answered;
cost is each row's. The log is read a page at a time into the estimates' running sums
(``policy.OffPolicyAccumulator``), so a log of millions of requests fits in memory."""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, Float, cast, func, select

from ..._exceptions import BestRouteError, ConfigError
from ...policy import OffPolicyAccumulator, OffPolicyEstimates
from ...routers import Router, load_router
from .._config import GatewayConfig
from .._loading import arm_problem
from .database import open_database
from .export import feedback_of, keyset_pages
from .schema import decisions, shadows

PAGE = 5000  # requests read, decided and added to the estimates at a time
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
class _Page:
    """The usable rows of one page of the log: routed, answered by the option planned first,
    with a propensity and a stored prompt."""

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
    batch: int = PAGE,
) -> LogEvaluation:
    """Estimate the router at ``candidate_path`` on ``config``'s decision log from ``since`` on,
    at ``knob``, else ``min_quality``'s knob, else its default; a BestRouteError says why the log
    cannot support an estimate. The log is read ``batch`` requests at a time and each page is
    decided and added to the estimates' running sums, so memory does not grow with the log."""
    candidate = load_router(candidate_path)
    servable = _servable(candidate, config)
    if knob is None:
        knob = (
            candidate.knob_for(min_relative_quality=min_quality)
            if min_quality is not None
            else candidate.default_knob()
        )
    index = {option.label: o for o, option in enumerate(candidate.options_)}
    quality, cost = OffPolicyAccumulator(), OffPolicyAccumulator()
    rows = labelled = 0
    logged_quality = logged_cost = 0.0
    for page in _pages(config, candidate.reference_.label, since, batch):
        assessed = candidate.assess(page.prompts)
        scores, expected = assessed.scores, assessed.cost
        # as this gateway would serve it: only the options it can, the out-of-domain prompts to the reference
        chosen = candidate.decide(assessed, knob, np.broadcast_to(servable, scores.shape))
        matched = np.array([candidate.options_[c].label == p for c, p in zip(chosen, page.planned, strict=True)])
        at_logged = np.array([index.get(p, -1) for p in page.planned])
        known = at_logged >= 0  # the direct model needs the candidate to have the logged option
        picked, logged = np.arange(len(chosen)), np.maximum(at_logged, 0)
        has = ~np.isnan(page.quality)
        quality.add(
            page.quality[has],
            page.propensity[has],
            matched[has],
            predicted_logged=np.where(known, scores[picked, logged], np.nan)[has],
            predicted_candidate=scores[picked, chosen][has],
        )
        cost.add(
            page.cost * 1000,
            page.propensity,
            matched,
            predicted_logged=np.where(known, expected[picked, logged], np.nan) * 1000,
            predicted_candidate=expected[picked, chosen] * 1000,
        )
        rows, labelled = rows + len(chosen), labelled + int(has.sum())
        logged_quality, logged_cost = (
            logged_quality + float(page.quality[has].sum()),
            logged_cost + float(page.cost.sum()),
        )
    estimated = quality.estimates()
    _check_overlap(estimated, "quality")
    return LogEvaluation(
        candidate=candidate.name,
        knob=float(knob),
        rows=rows,
        labelled=labelled,
        quality=estimated,
        cost_per_1k=cost.estimates(),
        logged_quality=logged_quality / labelled if labelled else math.nan,
        logged_cost_per_1k=logged_cost / rows * 1000,
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


def _check_overlap(estimated: OffPolicyEstimates, what: str) -> None:
    if estimated.matched < MIN_OVERLAP or estimated.effective_size < MIN_OVERLAP:
        raise BestRouteError(
            f"the log cannot support an estimate of the candidate's {what}: {estimated.matched} labelled "
            f"requests took the option it chooses (effective sample size {estimated.effective_size:.1f}, at least "
            f"{MIN_OVERLAP} needed); log more traffic with explore.rate, feedback or shadow checks"
        )


def _pages(config: GatewayConfig, reference: str, since: float, batch: int) -> Iterator[_Page]:
    """The routed answered requests logged from ``since`` on, ``batch`` at a time by id, as the
    rows an estimate can use. A request's quality is its mean feedback, else its shadow check's
    agreement with the reference, else 1 where the reference itself answered (its agreement with
    itself), else unknown. Once every page is read, a BestRouteError says why none was usable."""
    d = decisions
    query = select(d.c.id, d.c.prompt, d.c.planned_option, d.c.option, d.c.propensity, d.c.cost_usd).where(
        d.c.threshold.is_not(None), d.c.status == 200, d.c.created_at >= since
    )
    found = with_propensity = usable = 0
    engine = open_database(config.decision_log.url)
    try:
        for page in keyset_pages(engine, query, d.c.id, batch):
            found += len(page)
            logged = [r for r in page if r["propensity"] is not None and r["planned_option"] is not None]
            rows = [r for r in logged if r["prompt"] is not None and r["option"] == r["planned_option"]]
            with_propensity, usable = with_propensity + len(logged), usable + len(rows)
            if not rows:
                continue
            ids = [r["id"] for r in rows]
            given, agreed = feedback_of(engine, ids), _agreement_of(engine, ids)
            yield _Page(
                prompts=[r["prompt"] for r in rows],
                planned=[r["planned_option"] for r in rows],
                propensity=np.array([r["propensity"] for r in rows], dtype=float),
                cost=np.array([r["cost_usd"] for r in rows], dtype=float),
                quality=np.array(
                    [_quality(given.get(r["id"]), agreed.get(r["id"]), r["option"] == reference) for r in rows],
                    dtype=float,
                ),
            )
    finally:
        engine.dispose()
    if not found:
        raise BestRouteError("the decision log has no answered routed requests to evaluate a candidate on")
    if not with_propensity:
        raise BestRouteError(
            "the decision log has no propensities (its rows are from before the gateway logged them): "
            "serve with this version, ideally with explore.rate, and evaluate that traffic"
        )
    if not usable:
        raise BestRouteError(
            "no logged request has a stored prompt answered by the option planned first; turn on "
            "decision_log.store_prompts"
        )


def _agreement_of(engine: Engine, ids: list[str]) -> dict[str, float]:
    """Each decision's share of shadow checks that agreed with it (those that came out)."""
    query = (
        select(shadows.c.decision_id, func.avg(cast(shadows.c.agreed, Float)))
        .where(shadows.c.decision_id.in_(ids), shadows.c.agreed.is_not(None))
        .group_by(shadows.c.decision_id)
    )
    with engine.connect() as connection:
        return {decision_id: float(share) for decision_id, share in connection.execute(query)}


def _quality(feedback: list[float] | None, agreement: float | None, by_reference: bool) -> float:
    if feedback:
        return sum(feedback) / len(feedback)
    if agreement is not None:
        return float(agreement)
    return 1.0 if by_reference else math.nan
