"""What the decision log says about the traffic: requests, cost and escalations per option,
feedback and shadow quality, and the cost of always asking the reference instead. Read from the
rollups (``rollup``), so a month of a busy gateway's traffic costs one query over a few thousand
rows."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from ..._exceptions import ConfigError
from ...routers import load_router
from .._config import GatewayConfig
from .._loading import arm_problem
from .database import open_database
from .rollup import FAILED, option_rollup, read_window


@dataclass(frozen=True)
class OptionStats:
    """One option's requests (``option`` None: the requests no option answered)."""

    option: str | None
    requests: int
    cost_usd: float
    escalated: int
    latency_ms_mean: float
    feedback: int  # feedback posted on its requests
    quality: float | None  # their mean quality
    quality_sd: float | None  # their standard deviation
    shadow_checks: int  # shadow checks whose comparison came out (the shadow call answered)
    shadow_agreed: int  # of them, those whose answer agreed with the shadow's


@dataclass(frozen=True)
class TrafficStats:
    """The log's traffic from ``since`` (a ``time.time()``, aligned down to the minute for a
    window of a day or less, else to the hour; 0: all of it) to ``until`` (None: now).

    ``routed`` are the answered routed requests whose row estimated what the reference alone
    would have cost (``Recorder._reference_cost``: every row since that estimate exists), and
    ``reference_cost_usd`` sums those estimates."""

    since: float
    until: float | None
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
    engine = open_database(config.decision_log.url)
    try:
        return traffic_stats(engine, reference=reference, since=since)
    finally:
        engine.dispose()


def traffic_stats(engine: Engine, *, reference: str, since: float = 0.0, until: float | None = None) -> TrafficStats:
    r = option_rollup
    sums = [
        func.sum(r.c[name])
        for name in (
            "requests",
            "errors",
            "cost_usd",
            "routed",
            "routed_cost_usd",
            "reference_cost_usd",
            "escalated",
            "usage_estimated",
            "latency_ms",
            "feedback",
            "quality",
            "quality_squared",
            "shadow_checks",
            "shadow_agreed",
        )
    ]
    with engine.connect() as connection:
        _, start, where = read_window(connection, r, since, until)
        rows = connection.execute(select(r.c.option, *sums).where(where).group_by(r.c.option)).all()
    options = tuple(_option(row) for row in rows if row[1])
    return TrafficStats(
        since=start,
        until=until,
        requests=sum(int(row[1]) for row in rows),
        errors=sum(int(row[2]) for row in rows),
        cost_usd=sum(float(row[3]) for row in rows),
        routed=sum(int(row[4]) for row in rows),
        routed_cost_usd=sum(float(row[5]) for row in rows),
        reference=reference,
        reference_cost_usd=sum(float(row[6]) for row in rows),
        usage_estimated=sum(int(row[8]) for row in rows),
        options=tuple(sorted(options, key=lambda o: (o.option is None, -o.requests))),
    )


def _option(row: Sequence[Any]) -> OptionStats:
    option, requests, _, cost, _, _, _, escalated, _, latency, given, quality, squared, checks, agreed = row
    count = int(given)
    mean = float(quality) / count if count else None
    return OptionStats(
        option=None if option == FAILED else str(option),
        requests=int(requests),
        cost_usd=float(cost),
        escalated=int(escalated),
        latency_ms_mean=float(latency) / int(requests),
        feedback=count,
        quality=mean,
        quality_sd=math.sqrt(max(0.0, float(squared) / count - mean * mean)) if mean is not None else None,
        shadow_checks=int(checks),
        shadow_agreed=int(agreed),
    )
