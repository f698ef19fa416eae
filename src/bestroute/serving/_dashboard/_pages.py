"""The dashboard's pages: thin handlers that check the session, read the decision log (in a
thread: the queries are blocking SQL) and the running service's state, and render a template.
A request that is not signed in gets no data: a page redirects to the sign-in form."""

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from ..._exceptions import BestRouteError
from .._errors import InvalidRequest, NotFound
from .._log import (
    PAGE_SIZE,
    DecisionFilter,
    OptionStats,
    TrafficStats,
    decision_detail,
    decision_page,
    first_logged,
    latency_percentiles,
    model_stats,
    traffic_series,
    traffic_stats,
)
from .._requests import Access
from .._shadow import wilson_interval
from ..serving import ChatService
from ._session import COOKIE, SESSION_S, session_token, signed_in

PREFIX = "/dashboard"
RANGES = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0, "all": None}
DEFAULT_RANGE = "24h"
SERIES_BUCKETS = 48
_SECURITY_HEADERS = {
    # Every script, style and chart ships in the package: nothing else may load or frame the pages.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # signing in and out; the pages are ``pages``
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _utc(epoch: float | None) -> str:
    return "—" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def _share(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


templates.env.filters.update(utc=_utc, usd=_usd, share=_share, ms=_ms)


@dataclass(frozen=True)
class Span:
    """The time range a page shows: ``name`` one of RANGES, from ``since`` to ``until``."""

    name: str
    since: float
    until: float


def _span(request: Request) -> Span:
    name = request.query_params.get("range", DEFAULT_RANGE)
    if name not in RANGES:
        raise InvalidRequest(f"range must be one of {', '.join(RANGES)}", param="range")
    until = time.time()
    length = RANGES[name]
    return Span(name, 0.0 if length is None else until - length, until)


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service


def _engine(request: Request) -> Engine:
    return _service(request).recorder.log.engine


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    service = _service(request)
    shadow = service.shadow.tallies.report(service.config.shadow)
    breaches = [option for option, tally in shadow.items() if tally["below_target"]]
    response = templates.TemplateResponse(
        request,
        template,
        {"prefix": PREFIX, "breaches": breaches, "target": service.config.shadow.target}
        | ({"ranges": list(RANGES)} if "span" in context else {})
        | context,
        status_code=status,
    )
    response.headers.update(_SECURITY_HEADERS)
    return response


class SignInFirst(BestRouteError):
    """A page was asked for without a session: the answer is the sign-in form (no data)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def _signed_in(request: Request) -> None:
    """Every page's dependency: raises SignInFirst unless ``request`` is signed in."""
    access: Access = request.app.state.access
    if not signed_in(request, access):
        raise SignInFirst(request.url.path + (f"?{request.url.query}" if request.url.query else ""))


async def to_sign_in(_: Request, exc: Exception) -> Response:
    """The redirect a SignInFirst becomes, back to where the browser was sent from once signed in."""
    assert isinstance(exc, SignInFirst)
    return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': exc.target})}", status_code=303)


pages = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(_signed_in)])


def _next_page(value: str | None) -> str:
    """Where to go after signing in: a dashboard page only, never another site."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _page(request, "login.html", next=_next_page(request.query_params.get("next")), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    access: Access = request.app.state.access
    body = (await request.body())[:10_000].decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(body).items()}
    target = _next_page(form.get("next"))
    if access.admin_keys is None:
        return RedirectResponse(target, status_code=303)
    key = access.admin_key(form.get("key", ""))
    if key is None:
        return _page(request, "login.html", status=401, next=target, error="That is not an admin key.")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, session_token(key), max_age=SESSION_S, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


def _reference_stats(request: Request, span: Span) -> TrafficStats:
    service = _service(request)
    return traffic_stats(_engine(request), reference=service.reference.model, since=span.since, until=span.until)


def _series_start(engine: Engine, span: Span) -> float:
    if RANGES[span.name] is not None:
        return span.since
    first = first_logged(engine)
    return first if first is not None else span.until - 3600


@pages.get("")
async def overview(request: Request) -> Response:
    span = _span(request)

    def read() -> dict[str, Any]:
        stats = _reference_stats(request, span)
        engine = _engine(request)
        p50, p95 = latency_percentiles(engine, since=span.since, until=span.until, quantiles=(0.5, 0.95))
        series = traffic_series(engine, since=_series_start(engine, span), until=span.until, buckets=SERIES_BUCKETS)
        return {"stats": stats, "p50": p50, "p95": p95, "series": series}

    figures = await asyncio.to_thread(read)
    stats: TrafficStats = figures["stats"]
    answered = stats.requests - stats.errors
    escalated = sum(o.escalated for o in stats.options)
    chart = {
        "t": [b.start for b in figures["series"]],
        "requests": [b.requests for b in figures["series"]],
        "errors": [b.errors for b in figures["series"]],
        "escalated": [b.escalated for b in figures["series"]],
        "cost": [b.cost_usd for b in figures["series"]],
        "latency": [b.latency_ms_mean if b.requests else None for b in figures["series"]],
    }
    return _page(
        request,
        "overview.html",
        span=span,
        stats=stats,
        escalation_rate=escalated / answered if answered else None,
        p50=figures["p50"],
        p95=figures["p95"],
        chart=chart,
    )


@dataclass(frozen=True)
class OptionRow:
    """An option's figures as the options page shows them, with their intervals."""

    stats: OptionStats
    share: float
    quality_interval: tuple[float, float] | None
    shadow_agreement: float | None
    shadow_interval: tuple[float, float] | None


def _option_row(option: OptionStats, total: int, confidence: float) -> OptionRow:
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    quality = None
    if option.quality is not None and option.quality_sd is not None and option.feedback > 1:
        half = z * option.quality_sd / math.sqrt(option.feedback)
        quality = (option.quality - half, option.quality + half)
    checks = option.shadow_checks
    return OptionRow(
        stats=option,
        share=option.requests / total if total else 0.0,
        quality_interval=quality,
        shadow_agreement=option.shadow_agreed / checks if checks else None,
        shadow_interval=wilson_interval(option.shadow_agreed, checks, confidence) if checks else None,
    )


@pages.get("/options")
async def options(request: Request) -> Response:
    span = _span(request)

    def read() -> tuple[TrafficStats, Any]:
        return _reference_stats(request, span), model_stats(_engine(request), since=span.since, until=span.until)

    stats, models = await asyncio.to_thread(read)
    confidence = _service(request).config.shadow.confidence
    rows = [_option_row(o, stats.requests, confidence) for o in stats.options]
    return _page(
        request,
        "options.html",
        span=span,
        stats=stats,
        rows=rows,
        models=models,
        confidence=confidence,
    )


def _filter(request: Request, span: Span) -> DecisionFilter:
    query = request.query_params

    def text(name: str) -> str | None:
        value = query.get(name, "").strip()
        return value or None

    status = text("status")
    if status is not None and not (status.isascii() and status.isdigit() and len(status) == 3):
        raise InvalidRequest("status must be an HTTP status code", param="status")
    escalated = text("escalated")
    if escalated not in (None, "yes", "no"):
        raise InvalidRequest("escalated must be yes or no", param="escalated")
    before = None
    if (cursor := text("before")) is not None:
        at, _, last = cursor.partition("_")
        try:
            before = (float(at), last)
        except ValueError:
            raise InvalidRequest("before is not a page cursor", param="before") from None
        if not math.isfinite(before[0]) or not last:
            raise InvalidRequest("before is not a page cursor", param="before")
    return DecisionFilter(
        since=span.since,
        until=span.until,
        model=text("model"),
        option=text("option"),
        status=int(status) if status is not None else None,
        escalated=None if escalated is None else escalated == "yes",
        client_key_id=text("client_key"),
        before=before,
    )


@pages.get("/decisions")
async def decisions(request: Request) -> Response:
    span = _span(request)
    chosen = _filter(request, span)
    rows = await asyncio.to_thread(decision_page, _engine(request), chosen)
    service = _service(request)
    kept = {k: v for k, v in request.query_params.items() if k != "before" and v}
    older = None
    if len(rows) == PAGE_SIZE:
        last = rows[-1]
        older = "?" + urlencode(kept | {"before": f"{last['created_at']!r}_{last['id']}"})
    return _page(
        request,
        "decisions.html",
        span=span,
        rows=rows,
        chosen=chosen,
        query=kept,
        older=older,
        option_names=[
            o.label for o, active in zip(service.router.options_, service.router.active_, strict=True) if active
        ],
        model_names=[b.name for b in service.config.backends],
    )


@pages.get("/decisions/{decision_id}")
async def decision(request: Request, decision_id: str) -> Response:
    found = await asyncio.to_thread(decision_detail, _engine(request), decision_id)
    if found is None:
        raise NotFound(f"the decision log has no decision {decision_id!r}")
    scores = sorted((found.decision.get("scores") or {}).items(), key=lambda kv: -kv[1])
    return _page(request, "decision.html", found=found, row=found.decision, scores=scores)


@pages.get("/backends")
async def backends(request: Request) -> Response:
    service = _service(request)
    now = time.monotonic()
    rows = []
    for name, upstream in service.upstreams.items():
        breaker, retry = upstream.breaker, upstream.retry
        rows.append(
            {
                "name": name,
                "base_url": upstream.config.base_url,
                "state": breaker.state,
                "consecutive_failures": breaker.consecutive_failures,
                "ejections": breaker.ejections,
                "ejected_for_s": max(0.0, breaker.ejected_until - now),
                "in_flight": upstream.in_flight,
                "retries_in_flight": upstream.retries_in_flight,
                "retry_budget": max(retry.budget_min, retry.budget_ratio * upstream.in_flight),
            }
        )
    log = service.recorder.log
    config = service.config.shadow
    shared = service.shadow.tallies.shared(config)
    shadow = service.shadow.tallies.report(config)
    return _page(
        request, "backends.html", rows=rows, log=log, shadow=shadow, shared=shared, window_h=config.window_s / 3600
    )
