"""The FastAPI app: thin endpoints over ChatService; every error becomes OpenAI-style JSON."""

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .._exceptions import BestRouteError
from ..backends import BackendConfig, CircuitBreaker, Deadline, Upstream
from ..selection import online_selector
from ._budgets import Budgets
from ._config import GatewayConfig
from ._errors import (
    ClientDisconnected,
    GatewayError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unprocessable,
)
from ._feedback import AnsweredRequests, FeedbackService
from ._log import DecisionLog, check_database
from ._metrics import GatewayMetrics
from ._reload import Loaded, Reloader, load_serving
from .protocol import ChatCompletionRequest, ErrorBody, ErrorResponse, FeedbackRequest
from .serving import ROUTED_MODEL, ChatService

T = TypeVar("T")
CHAT_PATH = "/v1/chat/completions"
ADMIN_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/admin/reload"})
TIMEOUT_HEADER = "x-bestroute-timeout"
_logger = logging.getLogger(__name__)


def _error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _error_response(exc: Exception) -> JSONResponse:
    """The one mapping of errors to responses: a GatewayError carries its status and type;
    anything else is a 500 with no stack trace leaving the process."""
    if isinstance(exc, GatewayError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)
    return _error(500, "internal error", "server_error")


class Gateway:
    """The ASGI app. ``POST /v1/chat/completions`` goes straight to its handler; everything else,
    start-up and shutdown included, goes through FastAPI. The hot path so skips the framework's
    middleware layers: at a few hundred requests a second each layer runs from a cold CPU cache,
    and together they cost a few tenths of a millisecond per request on a 2-core VM.

    Chat requests beyond ``limits.max_concurrent_requests`` get a fast 503 with Retry-After; the
    admin endpoints (ADMIN_PATHS) need an admin key unless ``admin.open``."""

    def __init__(
        self,
        app: FastAPI,
        chat: Callable[[Request], Awaitable[Response]],
        config: GatewayConfig,
        admin_keys: list[bytes] | None,
    ) -> None:
        self.app, self.config = app, config
        self._chat = chat
        self._admin_keys = admin_keys
        self._in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CHAT_PATH:
            if self._in_progress >= self.config.limits.max_concurrent_requests:
                await _error_response(Overloaded("the gateway is at its limit of concurrent requests; retry shortly"))(
                    scope, receive, send
                )
                return
            self._in_progress += 1
            try:
                request = Request(scope, receive)
                try:
                    response = await self._chat(request)
                except Exception as exc:
                    if not isinstance(exc, GatewayError):  # a bug, not a client's or backend's error
                        _logger.exception("chat completion failed")
                    response = _error_response(exc)
                await response(scope, receive, send)
            finally:
                self._in_progress -= 1
            return
        if scope["type"] == "http" and scope["path"] in ADMIN_PATHS and not self.admits(Request(scope)):
            await _error_response(Unauthorized("this endpoint needs an admin API key", code="invalid_api_key"))(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    def admits(self, request: Request) -> bool:
        """Whether the request may see the admin endpoints."""
        return self._admin_keys is None or _matching_key(request, self._admin_keys) is not None


def create_app(config: GatewayConfig, *, config_path: Path | None = None) -> Gateway:
    """Build the gateway; backends, router and decision log are opened at start-up. With
    ``config_path``, the configuration and the router artifact can be reloaded while serving
    (SIGHUP, a change to either file, or POST /admin/reload)."""
    loaded = load_serving(config)
    check_database(config.decision_log.url)
    client_keys = [k.encode() for k in config.client_keys()]
    admin_keys = config.admin_keys()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, read_bufsize=2**20) as session:
            log = DecisionLog(
                config.decision_log.url,
                dead_letter_path=config.decision_log.dead_letter_path,
                max_backlog=config.decision_log.max_backlog,
            )
            metrics.watch_log(log)
            answered = AnsweredRequests()
            budgets = Budgets(config.budgets, log)

            def build(new: Loaded, previous: ChatService | None) -> ChatService:
                """A ChatService for ``new``; backends whose settings did not change keep their
                client state (circuit, requests in flight)."""
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
                            b,
                            new.config.retries,
                            session,
                            CircuitBreaker(new.config.circuit_breaker),
                            new.backend_keys[b.name],
                        )
                    )
                for name, upstream in upstreams.items():
                    metrics.watch_circuit(name, _is_ejected(upstream))
                budgets.configure(new.config.budgets)
                return ChatService(
                    config=new.config,
                    router=new.router,
                    upstreams=upstreams,
                    log=log,
                    metrics=metrics,
                    answered=answered,
                    budgets=budgets,
                    artifact=new.artifact,
                    selector=online_selector(
                        new.config.selector,
                        in_process=new.in_process_selector,
                        session=session,
                        upstreams=upstreams,
                    ),
                )

            app.state.service = build(loaded, None)
            app.state.feedback = FeedbackService(log, answered)
            reloader = Reloader(app, config_path, loaded, build)
            app.state.reloader = reloader
            tasks = [asyncio.create_task(_warn_unreachable(config.backends))]
            if config.budgets.shared:
                tasks.append(asyncio.create_task(budgets.share()))
            if config_path is not None:
                reloader.on_sighup()
                if config.reload_poll_s:
                    tasks.append(asyncio.create_task(reloader.watch(config.reload_poll_s)))
            # The router, tokenizer and libraries are hundreds of thousands of long-lived objects;
            # frozen, the collector stops re-scanning them while serving (a full pass takes ~0.1 s).
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                log.close()  # drains every queued row before the process exits

    app = FastAPI(title="bestroute gateway", lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_unprocessable(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error_response(exc)

    async def authorize(request: Request) -> str | None:
        """The fingerprint of the client's key (None when the gateway needs no key)."""
        if not client_keys:
            return None
        key = _matching_key(request, client_keys)
        if key is None:
            raise Unauthorized("invalid or missing API key", code="invalid_api_key")
        return hashlib.sha256(key).hexdigest()[:16]

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {config.limits.max_body_bytes} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(config.limits.body_timeout_s):
                async for part in request.stream():
                    body += part
                    if len(body) > config.limits.max_body_bytes:
                        raise PayloadTooLarge(f"request body exceeds {config.limits.max_body_bytes} bytes")
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {config.limits.body_timeout_s:g} s") from None
        too_deep = InvalidRequest(f"request body is nested deeper than {config.limits.max_json_depth} levels")
        try:
            document = json.loads(body)
        except RecursionError:
            raise too_deep from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
            raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
        if _depth_exceeds(document, config.limits.max_json_depth):
            raise too_deep
        return document

    async def chat_completions(request: Request) -> Response:
        client = await authorize(request)
        service: ChatService = app.state.service
        if service.budgets.active:
            service.budgets.admit(client)
        document = await read_json(request)
        deadline = _deadline(request, service.config)
        try:
            chat = ChatCompletionRequest.model_validate(document)
        except ValidationError as exc:
            return _error_response(_unprocessable(exc.errors()))
        if len(chat.messages) > config.limits.max_messages:
            raise PayloadTooLarge(f"at most {config.limits.max_messages} messages per request", param="messages")
        plan = service.plan(chat)
        if chat.stream:
            outcome, chunks = await _unless_disconnected(request, service.stream(chat, plan, deadline, client))
            return StreamingResponse(chunks, media_type="text/event-stream", headers=outcome.headers())
        body, outcome = await _unless_disconnected(request, service.complete(chat, plan, deadline, client))
        return JSONResponse(body, headers=outcome.headers())

    # Registered for the OpenAPI schema and other methods' 405; POSTs take the Gateway's direct path.
    app.add_api_route(
        CHAT_PATH,
        chat_completions,
        methods=["POST"],
        response_model=None,
        openapi_extra=_json_body(ChatCompletionRequest),
        summary="Chat completions, routed or direct",
    )

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        await authorize(request)
        service: ChatService = request.app.state.service
        names = [ROUTED_MODEL] + [b.name for b in service.config.backends]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "bestroute"} for n in names]}

    @app.post("/v1/feedback", openapi_extra=_json_body(FeedbackRequest))
    async def post_feedback(request: Request) -> dict[str, Any]:
        client = await authorize(request)
        try:
            feedback = FeedbackRequest.model_validate(await read_json(request))
        except ValidationError as exc:
            raise _unprocessable(exc.errors()) from None
        service: FeedbackService = request.app.state.feedback
        await service.record(feedback, client)
        return {"id": feedback.id, "object": "feedback", "status": "recorded"}

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness for anyone; the details for admins."""
        if not gateway.admits(request):
            return {"status": "ok"}
        service: ChatService = request.app.state.service
        log = service.log
        return {
            "status": "ok",
            "router": service.router.name,
            "reference": service.router.reference_.model,
            "artifact": service.artifact.describe(),
            "config_loaded_at": request.app.state.reloader.loaded_at,
            "backends": {n: u.breaker.state for n, u in service.upstreams.items()},
            "decision_log": {
                "backlog": log.backlog,
                "repaired": log.repaired,
                "dead_letters": log.dead_letters.count,
                "dead_letter_path": str(log.dead_letters.path),
            },
        }

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        """Reload the configuration and the router artifact; a bad file is refused (400) and the
        running ones keep serving."""
        reloader: Reloader = request.app.state.reloader
        try:
            service = await reloader.reload("POST /admin/reload")
        except BestRouteError as exc:
            raise InvalidRequest(f"reload refused, still serving the previous files: {exc}") from None
        return {"status": "reloaded", "artifact": service.artifact.describe()}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    gateway = Gateway(app, chat_completions, config, None if admin_keys is None else [k.encode() for k in admin_keys])
    return gateway


def _unprocessable(errors: Sequence[Any]) -> Unprocessable:
    """A 422 naming the first field pydantic found wrong."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return Unprocessable(f"{param or 'body'}: {first.get('msg')}", param=param)


def _is_ejected(upstream: Upstream) -> Callable[[], bool]:
    return lambda: upstream.breaker.state == "open"


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its JSON itself (to bound its size and
    depth before parsing), with the model's schema inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _matching_key(request: Request, keys: list[bytes]) -> bytes | None:
    """The key of ``keys`` the request's bearer token is, if any. Every key is compared, always,
    so timing says nothing about which key nearly matched."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    matched = None
    for key in keys:
        if hmac.compare_digest(given, key):
            matched = key
    return matched if scheme.lower() == "bearer" else None


def _deadline(request: Request, config: GatewayConfig) -> Deadline:
    """The request's deadline: ``timeouts.request_s``, or the client's x-bestroute-timeout (seconds)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return Deadline.after(config.timeouts.request_s)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= config.timeouts.max_request_s:  # NaN fails too
        raise InvalidRequest(
            f"{TIMEOUT_HEADER} must be a number of seconds above 0 and at most {config.timeouts.max_request_s:g}",
            param=TIMEOUT_HEADER,
        )
    return Deadline.after(seconds)


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


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether JSON containers nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in value if isinstance(child, dict | list))
    return False


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (and its upstream requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientDisconnected("client disconnected")
