"""The gateway app: start-up and shutdown, building a ChatService for what is loaded (again on
each reload), and the ASGI entry that sends chat completions straight to their handler. The
endpoints are in ``routes``; errors become OpenAI-style JSON in ``_errors``."""

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ..backends import BackendConfig, CircuitBreaker, Upstream
from ._affinity import Conversations
from ._budgets import Budgets
from ._config import GatewayConfig
from ._dashboard import install_dashboard
from ._errors import GatewayError, Overloaded, Unauthorized, error_json, error_response
from ._feedback import AnsweredRequests, FeedbackService
from ._judging import online_selector
from ._loading import Loaded, load_serving
from ._log import DecisionLog, check_database
from ._metrics import GatewayMetrics
from ._recording import Recorder
from ._reload import Reloader
from ._requests import Access, unprocessable
from ._responses import JSONResponse
from ._shadow import ShadowTallies, share_checks
from ._workers import group_dir, membership
from .routes import CHAT_PATH, chat_completions, router
from .serving import ChatService

ADMIN_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/admin/reload"})
_logger = logging.getLogger(__name__)


class Gateway:
    """The ASGI app. ``POST /v1/chat/completions`` goes straight to its handler; everything else,
    start-up and shutdown included, goes through FastAPI. The hot path so skips the framework's
    middleware layers: at a few hundred requests a second each layer runs from a cold CPU cache,
    and together they cost a few tenths of a millisecond per request on a 2-core VM.

    Chat requests beyond ``limits.max_concurrent_requests`` get a fast 503 with Retry-After; the
    admin endpoints (ADMIN_PATHS) need an admin key unless ``admin.open``."""

    def __init__(self, app: FastAPI, config: GatewayConfig) -> None:
        self.app, self.config = app, config
        self._access: Access = app.state.access
        self._in_progress = 0

    def describe(self, url: str) -> str:
        """The start-up line: where it serves, the router and its reference, the backends and
        the decision log (its password hidden)."""
        loaded: Loaded = self.app.state.starting[0]
        router = loaded.router
        servable = int(router.active_.sum())
        log = make_url(self.config.decision_log.url).render_as_string(hide_password=True)
        return (
            f"bestroute gateway at {url}: router {loaded.artifact.path} ({router.name}, {servable} options, "
            f"reference {router.reference_.model}, selector {self.config.selector}); "
            f"backends {', '.join(b.name for b in self.config.backends)}; decision log {log}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CHAT_PATH:
            if self._in_progress >= self.config.limits.max_concurrent_requests:
                await error_response(Overloaded("the gateway is at its limit of concurrent requests; retry shortly"))(
                    scope, receive, send
                )
                return
            self._in_progress += 1
            try:
                scope["app"] = self.app  # what FastAPI sets, so the handler finds the app's state
                request = Request(scope, receive)
                try:
                    response = await chat_completions(request)
                except Exception as exc:
                    if not isinstance(exc, GatewayError):  # a bug, not a client's or backend's error
                        _logger.exception("chat completion failed")
                    response = error_response(exc)
                await response(scope, receive, send)
            finally:
                self._in_progress -= 1
            return
        if scope["type"] == "http" and scope["path"] in ADMIN_PATHS and not self._access.admits(Request(scope)):
            await error_response(Unauthorized("this endpoint needs an admin API key", code="invalid_api_key"))(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


def create_app(config: GatewayConfig, *, config_path: Path | None = None) -> Gateway:
    """Build the gateway; backends, router and decision log are opened at start-up. With
    ``config_path``, the configuration and the router artifact can be reloaded while serving
    (SIGHUP, a change to either file, or POST /admin/reload)."""
    loaded = load_serving(config)
    check_database(config.decision_log.url)
    app = FastAPI(title="bestroute gateway", lifespan=_lifespan)
    app.state.access, app.state.metrics = Access.of(config), GatewayMetrics()
    app.state.starting = (loaded, config_path)  # what the lifespan opens
    app.add_exception_handler(GatewayError, _as_response)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _as_response)
    app.include_router(router)
    install_dashboard(app)
    return Gateway(app, config)


async def _as_response(_: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(unprocessable(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_json(exc.status_code, str(exc.detail), "invalid_request_error")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the backends' HTTP session, the decision log and the budgets; serve; then drain the log."""
    loaded, config_path = app.state.starting
    config: GatewayConfig = loaded.config
    metrics: GatewayMetrics = app.state.metrics
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=2**20) as session:
        log = DecisionLog(
            config.decision_log.url,
            dead_letter_path=config.decision_log.dead_letter_path,
            max_backlog=config.decision_log.max_backlog,
            batch_window_s=config.decision_log.batch_window_s,
            minute_rollup_days=config.decision_log.minute_rollup_days,
        )
        metrics.watch_log(log)
        answered = AnsweredRequests()
        recorder = Recorder(
            log=log,
            metrics=metrics,
            answered=answered,
            budgets=Budgets(config.budgets, log),
            store_prompts=config.decision_log.store_prompts,
        )
        in_group = group_dir() is not None  # a worker of `serve --workers N`: a replica of the others
        # Routing and in-process selection are CPU-bound: they run here, never on the event loop.
        pool = ThreadPoolExecutor(max_workers=config.limits.cpu_workers, thread_name_prefix="bestroute-cpu")
        build = functools.partial(
            build_service,
            session=session,
            recorder=recorder,
            pool=pool,
            tallies=ShadowTallies(in_group=in_group),
            conversations=Conversations(lambda: recorder.log.engine, pool),
        )
        app.state.service = build(loaded, None)
        app.state.feedback = FeedbackService(log, answered)
        reloader = Reloader(app, config_path, loaded, build)
        app.state.reloader = reloader
        tasks = [
            asyncio.create_task(_warn_unreachable(config.backends)),
            asyncio.create_task(share_checks(lambda: app.state.service.shadow)),
        ]
        if config.budgets.shared or in_group:  # each worker of a group is a replica
            tasks.append(asyncio.create_task(recorder.budgets.share()))
        if in_group:
            tasks.append(asyncio.create_task(metrics.publish_every()))
        if config_path is not None:
            reloader.on_sighup()
            if config.reload_poll_s:
                tasks.append(asyncio.create_task(reloader.watch(config.reload_poll_s)))
        # The router, tokenizer and libraries are hundreds of thousands of long-lived objects;
        # frozen, the collector stops re-scanning them while serving (a full pass takes ~0.1 s).
        gc.collect()
        gc.freeze()
        try:
            with membership():
                yield
        finally:
            for task in tasks:
                task.cancel()
            checks = app.state.service.shadow.running
            if checks:  # shadow checks in flight get a few seconds to finish and be logged
                await asyncio.wait(checks, timeout=5)
            pool.shutdown(wait=False, cancel_futures=True)
            log.close()  # drains every queued row before the process exits


def build_service(
    new: Loaded,
    previous: ChatService | None,
    *,
    session: aiohttp.ClientSession,
    recorder: Recorder,
    pool: Executor,
    tallies: ShadowTallies,
    conversations: Conversations,
) -> ChatService:
    """A ChatService for ``new``; backends whose settings did not change keep their client state
    (circuit, requests in flight)."""
    kept = previous.upstreams if previous is not None else {}
    upstreams = {}
    for b in new.config.backends:
        old = kept.get(b.name)
        same = (
            old is not None
            and old.config == b
            and old.retry == new.config.retries
            and old.breaker.config == new.config.circuit_breaker
            and old.api_key == new.backend_keys[b.name]
        )
        upstreams[b.name] = (
            old
            if same and old is not None
            else Upstream(
                b, new.config.retries, session, CircuitBreaker(new.config.circuit_breaker), new.backend_keys[b.name]
            )
        )
    for name, upstream in upstreams.items():
        recorder.metrics.watch_circuit(name, _is_ejected(upstream))
    recorder.budgets.configure(new.config.budgets)
    selector = online_selector(
        new.config.selector, in_process=new.in_process_selector, pool=pool, session=session, upstreams=upstreams
    )
    return ChatService(
        config=new.config,
        router=new.router,
        upstreams=upstreams,
        recorder=recorder,
        artifact=new.artifact,
        selector=selector,
        pool=pool,
        tallies=tallies,
        conversations=conversations,
    )


def _is_ejected(upstream: Upstream) -> Callable[[], bool]:
    return lambda: upstream.breaker.state == "open"


async def _warn_unreachable(backends: list[BackendConfig]) -> None:
    """One warning line per backend nothing listens for at start-up (it may come up later)."""

    async def probe(backend: BackendConfig) -> None:
        url = urlsplit(backend.base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_connection(url.hostname, port)
            writer.close()
        except (OSError, TimeoutError) as exc:
            _logger.warning(
                "backend %r: nothing answers at %s:%d (%s); requests fail over until it does",
                backend.name,
                url.hostname,
                port,
                type(exc).__name__,
            )

    await asyncio.gather(*(probe(b) for b in backends))
