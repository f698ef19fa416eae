"""What the decision log says about the traffic: requests, cost and escalations per option,
feedback quality, and the cost of always asking the reference instead. Aggregated in SQL, so
it reads a log of any size in a few queries."""

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, Engine, Float, and_, case, cast, func, select

from ..._exceptions import ConfigError
from ...data import ModelPrice, arm_parts
from ...routers import load_router
from .._config import GatewayConfig
from .._loading import arm_problem
from .schema import calls, decisions, feedback, open_database


@dataclass(frozen=True)
class OptionStats:
    """One option's answered requests (``option`` None: the requests that failed)."""

    option: str | None
    requests: int
    cost_usd: float
    escalated: int
    latency_ms_mean: float
    feedback: int  # requests with feedback
    quality: float | None  # their mean feedback quality


@dataclass(frozen=True)
class TrafficStats:
    """The log's traffic from ``since`` on (a ``time.time()``; 0: all of it).

    ``reference_cost_usd`` estimates what the routed requests would have cost had each gone to
    the reference alone: each request's input tokens at the reference's prices, and the
    reference's own output tokens where it was called, else its mean output tokens per sample
    over the log (where it was never called, each request's answered output, per sample)."""

    since: float
    first_at: float | None
    last_at: float | None
    requests: int
    errors: int
    cost_usd: float
    routed: int
    routed_cost_usd: float
    reference: str
    reference_cost_usd: float
    usage_estimated: int
    options: tuple[OptionStats, ...]

    @property
    def savings(self) -> float | None:
        """The routed traffic's saving against always the reference, as a fraction of the latter."""
        return 1 - self.routed_cost_usd / self.reference_cost_usd if self.reference_cost_usd > 0 else None


def log_stats(config: GatewayConfig, *, since: float = 0.0) -> TrafficStats:
    """The traffic in ``config``'s decision log, against its router's reference at that backend's prices."""
    if config.router is None:
        raise ConfigError("the configuration names no router artifact (key: router): its reference is needed")
    reference = load_router(config.router).reference_.model
    problem = arm_problem(reference, {b.name for b in config.backends}, {s.name for s in config.strategies})
    if problem:
        raise ConfigError(f"the router's reference model {reference!r} {problem}")
    backend = config.backend(arm_parts(reference)[0])
    assert backend is not None  # checked above
    engine = open_database(config.decision_log.url)
    try:
        return traffic_stats(engine, reference=reference, price=backend.price, since=since)
    finally:
        engine.dispose()


def traffic_stats(engine: Engine, *, reference: str, price: ModelPrice, since: float = 0.0) -> TrafficStats:
    d = decisions
    window = d.c.created_at >= since
    answered = and_(window, d.c.status == 200)
    routed = and_(answered, d.c.threshold.is_not(None))
    with engine.connect() as connection:
        totals = connection.execute(
            select(
                func.count(),
                func.sum(case((d.c.status != 200, 1), else_=0)),
                func.coalesce(func.sum(d.c.cost_usd), 0.0),
                func.min(d.c.created_at),
                func.max(d.c.created_at),
                func.sum(case((routed, 1), else_=0)),
                func.coalesce(func.sum(case((routed, d.c.cost_usd), else_=0.0)), 0.0),
                func.sum(case((d.c.usage_estimated == 1, 1), else_=0)),
            ).where(window)
        ).one()
        quality = (
            select(feedback.c.decision_id, func.avg(feedback.c.quality).label("quality"))
            .group_by(feedback.c.decision_id)
            .subquery()
        )
        by_option = connection.execute(
            select(
                d.c.option,
                func.count(),
                func.coalesce(func.sum(d.c.cost_usd), 0.0),
                func.coalesce(func.sum(d.c.escalated), 0),
                func.avg(d.c.latency_ms),
                func.count(quality.c.decision_id),
                func.avg(quality.c.quality),
            )
            .select_from(d.outerjoin(quality, quality.c.decision_id == d.c.id))
            .where(window)
            .group_by(d.c.option)
        ).all()
        reference_cost = _reference_cost(connection, routed, reference, price)
    options = tuple(
        OptionStats(
            option=row[0],
            requests=int(row[1]),
            cost_usd=float(row[2]),
            escalated=int(row[3]),
            latency_ms_mean=float(row[4] or 0.0),
            feedback=int(row[5]),
            quality=float(row[6]) if row[6] is not None else None,
        )
        for row in by_option
    )
    return TrafficStats(
        since=since,
        first_at=totals[3],
        last_at=totals[4],
        requests=int(totals[0]),
        errors=int(totals[1] or 0),
        cost_usd=float(totals[2]),
        routed=int(totals[5] or 0),
        routed_cost_usd=float(totals[6]),
        reference=reference,
        reference_cost_usd=reference_cost,
        usage_estimated=int(totals[7] or 0),
        options=tuple(sorted(options, key=lambda o: (o.option is None, -o.requests))),
    )


def _reference_cost(connection: Connection, routed: ColumnElement[bool], reference: str, price: ModelPrice) -> float:
    """The estimate :class:`TrafficStats` describes, over the routed answered requests."""
    d, c = decisions, calls
    ok = and_(c.c.error.is_(None), c.c.requests > 0, c.c.samples > 0)
    # per request: the input tokens of one HTTP request (every call sends the same prompt), the
    # reference's output per sample where it was called, and the answered output per sample
    per_request = (
        select(
            c.c.decision_id,
            func.min(cast(c.c.input_tokens, Float) / c.c.requests).label("input"),
            (
                cast(func.sum(case((c.c.model == reference, c.c.output_tokens), else_=0)), Float)
                / func.nullif(func.sum(case((c.c.model == reference, c.c.samples), else_=0)), 0)
            ).label("reference_output"),
            (cast(func.sum(c.c.output_tokens), Float) / func.sum(c.c.samples)).label("output"),
        )
        .where(ok)
        .group_by(c.c.decision_id)
        .subquery()
    )
    mean_reference_output = connection.execute(
        select(cast(func.sum(c.c.output_tokens), Float) / func.nullif(func.sum(c.c.samples), 0)).where(
            ok, c.c.model == reference
        )
    ).scalar()
    fallback = per_request.c.output if mean_reference_output is None else mean_reference_output
    inputs, outputs = connection.execute(
        select(
            func.coalesce(func.sum(per_request.c.input), 0.0),
            func.coalesce(func.sum(func.coalesce(per_request.c.reference_output, fallback)), 0.0),
        )
        .select_from(per_request.join(d, d.c.id == per_request.c.decision_id))
        .where(routed)
    ).one()
    return price.cost(float(inputs), float(outputs))
