"""Reading a client's request before any handler trusts it: its API key, a JSON body bounded in
size, depth and arrival time, its deadline, and its connection while the answer is worked out."""

import asyncio
import hashlib
import hmac
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import ValidationError

from .._json import parse_json
from ..backends import Deadline
from ._config import GatewayConfig, LimitsConfig
from ._errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, RequestTimeout, Unauthorized, Unprocessable
from .protocol import CONSTRAINT_HEADERS, NO_CONSTRAINTS, ChatCompletionRequest, RequestConstraints

T = TypeVar("T")
TIMEOUT_HEADER = "x-bestroute-timeout"
_CONSTRAINT_HEADER_NAMES = frozenset(header.encode() for header in CONSTRAINT_HEADERS)  # as the ASGI scope has them


@dataclass(frozen=True)
class Access:
    """Who may call: ``client_keys`` for the API (none: anyone), ``admin_keys`` for the admin
    endpoints (None: anyone)."""

    client_keys: list[bytes]
    admin_keys: list[bytes] | None

    @classmethod
    def of(cls, config: GatewayConfig) -> "Access":
        admin = config.admin_keys()
        return cls([k.encode() for k in config.client_keys()], None if admin is None else [k.encode() for k in admin])

    def client(self, request: Request) -> str | None:
        """The fingerprint of the client's key (None when the gateway needs no key)."""
        if not self.client_keys:
            return None
        key = _matching_key(request, self.client_keys)
        if key is None:
            raise Unauthorized("invalid or missing API key", code="invalid_api_key")
        return hashlib.sha256(key).hexdigest()[:16]

    def admits(self, request: Request) -> bool:
        """Whether the request may see the admin endpoints."""
        return self.admin_keys is None or _matching_key(request, self.admin_keys) is not None

    def admin_key(self, given: str) -> bytes | None:
        """The admin key ``given`` is (None: it is none of them, or no key is needed)."""
        return None if self.admin_keys is None else matching(given.encode(), self.admin_keys)


def _matching_key(request: Request, keys: list[bytes]) -> bytes | None:
    """The key of ``keys`` the request's bearer token is, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    matched = matching(token.strip().encode(), keys)
    return matched if scheme.lower() == "bearer" else None


def matching(given: bytes, secrets: list[bytes]) -> bytes | None:
    """The one of ``secrets`` that ``given`` is, if any. Every one is compared, always, so timing
    says nothing about which nearly matched."""
    matched = None
    for secret in secrets:
        if hmac.compare_digest(given, secret):
            matched = secret
    return matched


async def read_json(request: Request, limits: LimitsConfig) -> Any:
    """The request's JSON body: at most ``max_body_bytes`` (413), arrived within
    ``body_timeout_s`` (408), nested at most ``max_json_depth`` deep and valid JSON (400)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body exceeds {limits.max_body_bytes} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for part in request.stream():
                body += part
                if len(body) > limits.max_body_bytes:
                    raise PayloadTooLarge(f"request body exceeds {limits.max_body_bytes} bytes")
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
    too_deep = InvalidRequest(f"request body is nested deeper than {limits.max_json_depth} levels")
    try:
        document = parse_json(body)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
    if _depth_exceeds(body, document, limits.max_json_depth):
        raise too_deep
    return document


def _depth_exceeds(body: bytes | bytearray, document: Any, limit: int) -> bool:
    """Whether the JSON containers of ``document`` (parsed from ``body``) nest deeper than
    ``limit`` (iterative: no recursion to exhaust). Every container opens with a bracket byte of
    the body, so a body with at most ``limit`` of them is not walked."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
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


def unprocessable(errors: Sequence[Any]) -> Unprocessable:
    """A 422 naming the first field pydantic found wrong."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return Unprocessable(f"{param or 'body'}: {first.get('msg')}", param=param)


def constraints_of(request: Request, chat: ChatCompletionRequest) -> RequestConstraints:
    """The client's routing constraints: the body's ``bestroute`` field, and for a field it leaves
    out, the x-bestroute-* header (models comma-separated). A bad value is a 400 naming it."""
    if chat.bestroute is None and not any(name in _CONSTRAINT_HEADER_NAMES for name, _ in request.scope["headers"]):
        return NO_CONSTRAINTS  # what nearly every request has: nothing to look up or validate
    given = chat.bestroute.model_dump(exclude_none=True) if chat.bestroute is not None else {}
    from_headers = {}
    for header, name in CONSTRAINT_HEADERS.items():
        raw = request.headers.get(header)
        if raw is not None and name not in given:
            from_headers[name] = header
            given[name] = [m.strip() for m in raw.split(",") if m.strip()] if name.endswith("_models") else raw.strip()
    try:
        return RequestConstraints.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise InvalidRequest(f"{name}: {first['msg']}", param=from_headers.get(name, f"bestroute.{name}")) from None


def deadline_of(request: Request, config: GatewayConfig) -> Deadline:
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


# How often a request still running asks whether its client is still there.
DISCONNECT_POLL_S = 0.25


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (and its upstream requests) if the client goes away first.

    ``work`` runs in the request's own task; a timer looks for the client every
    DISCONNECT_POLL_S while it runs. Most requests end before the first look, so they pay for
    one timer instead of a task of their own and an ``asyncio.wait`` every 0.25 s."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None  # a request always runs in a task
    gone = False
    looking: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle

    async def look() -> None:
        nonlocal gone, timer
        if await request.is_disconnected():
            gone = True
            task.cancel()
        else:
            timer = loop.call_later(DISCONNECT_POLL_S, start_looking)

    def start_looking() -> None:
        nonlocal looking
        looking = loop.create_task(look())

    timer = loop.call_later(DISCONNECT_POLL_S, start_looking)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # cancelled by look() alone, not by the server too
            raise ClientDisconnected("client disconnected") from None
        raise
    finally:
        timer.cancel()
        if looking is not None:
            looking.cancel()
