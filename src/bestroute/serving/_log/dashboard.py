"""What the dashboard reads from the decision log: from the rollups, latency percentiles and the
traffic over time for the overview and the calls per model; from the rows, one page of the
decisions list (filtered, newest first, paged by keyset: an index walk, whatever the log's size)
and one decision with its calls, feedback and shadow checks. The per-option figures and the
counterfactual cost are ``stats.traffic_stats``'s, the one home of those."""

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select

from .rollup import HOUR, bin_middle_ms, latency_rollup, model_rollup, option_rollup, read_window
from .schema import calls, decisions, feedback, shadows

PAGE_SIZE = 50


@dataclass(frozen=True)
class Bucket:
    """The traffic logged from ``start`` for one bucket's width."""

    start: float
    requests: int
    errors: int
    cost_usd: float
    escalated: int
    latency_ms_mean: float


@dataclass(frozen=True)
class ModelStats:
    """One backend's (or arm's) calls made by the requests in a window."""

    model: str
    calls: int
    samples: int
    failed: int
    cost_usd: float
    input_tokens: int
    output_tokens: int
    latency_ms_mean: float


@dataclass(frozen=True, kw_only=True)
class DecisionFilter:
    """Which decisions the list shows; None: any. ``before`` is the (created_at, id) of the last
    row of the previous page."""

    since: float = 0.0
    until: float | None = None
    model: str | None = None
    option: str | None = None
    status: int | None = None
    escalated: bool | None = None
    client_key_id: str | None = None
    before: tuple[float, str] | None = None


@dataclass(frozen=True)
class DecisionDetail:
    """One decision's row, its calls, its feedback and its shadow checks, as the log holds them."""

    decision: dict[str, Any]
    calls: tuple[dict[str, Any], ...]
    feedback: tuple[dict[str, Any], ...]
    shadows: tuple[dict[str, Any], ...]


def latency_percentiles(
    engine: Engine, *, since: float, until: float | None, quantiles: tuple[float, ...]
) -> tuple[float | None, ...]:
    """The answered requests' latency at each quantile, from the latency histogram: the middle
    of the bin holding the smallest latency at or above that share of them (None: no requests)."""
    r = latency_rollup
    with engine.connect() as connection:
        _, _, where = read_window(connection, r, since, until)
        rows = connection.execute(select(r.c.bin, func.sum(r.c.requests)).where(where).group_by(r.c.bin)).all()
    bins = sorted((int(b), int(count)) for b, count in rows)
    total = sum(count for _, count in bins)
    found: list[float | None] = []
    for q in quantiles:
        if not total:
            found.append(None)
            continue
        rank, seen = max(1, math.ceil(q * total)), 0
        for b, count in bins:
            seen += count
            if seen >= rank:
                found.append(bin_middle_ms(b))
                break
    return tuple(found)


def traffic_series(engine: Engine, *, since: float, until: float, buckets: int) -> tuple[Bucket, ...]:
    """The window cut into at most ``buckets`` equal spans of whole rollup buckets, each with its
    traffic (empty spans included)."""
    r = option_rollup
    with engine.connect() as connection:
        width, start, where = read_window(connection, r, since, until)
        rows = connection.execute(
            select(
                r.c.bucket,
                func.sum(r.c.requests),
                func.sum(r.c.errors),
                func.sum(r.c.cost_usd),
                func.sum(r.c.escalated),
                func.sum(r.c.latency_ms),
            )
            .where(where)
            .group_by(r.c.bucket)
        ).all()
    step = max(1, math.ceil((until - start) / width / buckets)) * width
    spans = math.ceil((until - start) / step)
    sums = [[0, 0, 0.0, 0, 0.0] for _ in range(spans)]
    for bucket, *values in rows:
        k = min(spans - 1, (int(bucket) - start) // step)
        for i, value in enumerate(values):
            sums[k][i] += value
    return tuple(
        Bucket(start + k * step, int(n), int(errors), float(cost), int(escalated), float(latency) / n if n else 0.0)
        for k, (n, errors, cost, escalated, latency) in enumerate(sums)
    )


def model_stats(engine: Engine, *, since: float, until: float | None) -> tuple[ModelStats, ...]:
    """Per model, the calls the window's requests made, busiest first."""
    r = model_rollup
    names = ("calls", "samples", "failed", "cost_usd", "input_tokens", "output_tokens", "latency_ms")
    with engine.connect() as connection:
        _, _, where = read_window(connection, r, since, until)
        rows = connection.execute(
            select(r.c.model, *(func.sum(r.c[name]) for name in names)).where(where).group_by(r.c.model)
        ).all()
    stats = (
        ModelStats(
            str(m), int(n), int(samples), int(failed), float(cost), int(inputs), int(outputs), float(latency) / n
        )
        for m, n, samples, failed, cost, inputs, outputs, latency in rows
        if n
    )
    return tuple(sorted(stats, key=lambda m: (-m.calls, m.model)))


def first_logged(engine: Engine) -> float | None:
    """The start of the first hour the log has requests in (None: it has none)."""
    r = option_rollup
    with engine.connect() as connection:
        first = connection.execute(select(func.min(r.c.bucket)).where(r.c.width == HOUR)).scalar()
    return None if first is None else float(first)


def _in_window(since: float, until: float | None) -> ColumnElement[bool]:
    """The decisions logged from ``since`` up to (not including) ``until`` (None: no end)."""
    start = decisions.c.created_at >= since
    return start if until is None else and_(start, decisions.c.created_at < until)


_LISTED = (
    "id",
    "created_at",
    "requested_model",
    "option",
    "model",
    "n",
    "status",
    "escalated",
    "confidence",
    "cost_usd",
    "latency_ms",
    "client_key_id",
    "error",
)


def decision_page(engine: Engine, chosen: DecisionFilter, *, limit: int = PAGE_SIZE) -> tuple[dict[str, Any], ...]:
    """Up to ``limit`` decisions ``chosen`` lets through, newest first."""
    d = decisions
    where = [_in_window(chosen.since, chosen.until)]
    for column, value in (
        (d.c.model, chosen.model),
        (d.c.option, chosen.option),
        (d.c.status, chosen.status),
        (d.c.client_key_id, chosen.client_key_id),
    ):
        if value is not None:
            where.append(column == value)
    if chosen.escalated is not None:
        where.append(d.c.escalated == 1 if chosen.escalated else or_(d.c.escalated.is_(None), d.c.escalated == 0))
    if chosen.before is not None:
        at, last = chosen.before
        where.append(or_(d.c.created_at < at, and_(d.c.created_at == at, d.c.id < last)))
    query = (
        select(*(d.c[name] for name in _LISTED))
        .where(*where)
        .order_by(d.c.created_at.desc(), d.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return tuple(dict(r._mapping) for r in connection.execute(query))


def decision_detail(engine: Engine, decision_id: str) -> DecisionDetail | None:
    """The decision ``decision_id`` and what the log holds about it; None if it holds no such decision."""
    with engine.connect() as connection:
        row = connection.execute(select(decisions).where(decisions.c.id == decision_id)).first()
        if row is None:
            return None

        def rows(table: Any, order: ColumnElement[Any]) -> tuple[dict[str, Any], ...]:
            found = connection.execute(select(table).where(table.c.decision_id == decision_id).order_by(order))
            return tuple(dict(r._mapping) for r in found)

        return DecisionDetail(
            decision=dict(row._mapping),
            calls=rows(calls, calls.c.id),
            feedback=rows(feedback, feedback.c.id),
            shadows=rows(shadows, shadows.c.id),
        )
