"""Calls to OpenAI-compatible upstreams: per-try timeouts under one request deadline, retries with
backoff (honouring Retry-After) within a retry budget, outlier ejection per backend, n samples as
one request or n concurrent ones, and streams that fail over before their first chunk."""

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp

from .._exceptions import BestRouteError
from .._json import json_bytes, parse_json
from .._text import without_lone_surrogates
from ._config import BackendConfig, CircuitConfig, RetryConfig

T = TypeVar("T")

# Which recorded sample a replay backend (`bestroute replay serve`) starts from; sent only when
# it is not 0, and ignored by every other server.
FIRST_SAMPLE_HEADER = "x-bestroute-first-sample"
# Statuses retried on the same backend (after a backoff, or the upstream's Retry-After).
_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# 4xx that say the backend is misconfigured (its key, its model id), not that the request is bad.
_BACKEND_FAULT_STATUS = {401, 403, 404, 407}
_ERROR_BODY_BYTES = 65_536
_NO_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None)  # timeouts are the caller's (per try, stream idle)


class UpstreamError(BestRouteError):
    """A backend did not answer usefully. The message names the backend, never its key.
    ``counts``: whether this is evidence against the backend's health (see CircuitBreaker)."""

    def __init__(self, backend: str, reason: str, *, counts: bool = True) -> None:
        super().__init__(f"backend {backend!r}: {reason}")
        self.backend, self.reason, self.counts = backend, reason, counts


class UpstreamRejected(UpstreamError):
    """The backend refused the request itself (a 4xx such as 400, 413 or 422): the client gets that
    status and the upstream's error; no retry, no fail-over, and the backend stays healthy."""

    def __init__(self, backend: str, status: int, error: dict[str, str | None]) -> None:
        super().__init__(backend, f"rejected the request (HTTP {status})", counts=False)
        self.status, self.error = status, error


class DeadlinePassed(UpstreamError):
    """The request's deadline passed before the backend answered; not held against the backend."""

    def __init__(self, backend: str, reason: str = "the request's deadline passed") -> None:
        super().__init__(backend, reason, counts=False)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered by, across all its attempts (``time.monotonic()``)."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


NO_DEADLINE = Deadline(math.inf)


@dataclass(frozen=True)
class Completion:
    """What one backend returned for one call of n samples, over all its requests: the choices as
    the upstream sent them (tool calls, refusals and logprobs included), the first response's
    other fields, which the gateway passes on, the tokens, and the requests it took.
    ``sample_tokens`` is each choice's output: exact where each request returned one choice,
    else the reported total split in proportion to the choices' lengths."""

    choices: list[dict[str, Any]]
    document: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    sample_tokens: tuple[int, ...] = ()
    requests: int = 1
    tokens_estimated: bool = False  # the upstream reported no usage: the counts are characters / 4

    @property
    def texts(self) -> list[str]:
        return [answer_text(c["message"]) for c in self.choices]


def split_tokens(total: int, texts: list[str]) -> tuple[int, ...]:
    """``total`` output tokens shared among ``texts`` in proportion to their lengths (largest
    remainders first), so the parts add up to the total."""
    weights = [len(t) + 1 for t in texts]  # +1: an empty answer still took a token to end
    exact = [total * w / sum(weights) for w in weights]
    parts = [math.floor(x) for x in exact]
    for k in sorted(range(len(texts)), key=lambda k: parts[k] - exact[k])[: total - sum(parts)]:
        parts[k] += 1
    return tuple(parts)


class CircuitBreaker:
    """Outlier ejection as Envoy does it: ``failures`` consecutive failures eject the backend for
    ``reset_s``, times the number of recent ejections (capped at ``max_ejection_s``); when that
    time is up traffic flows again. Ejection expires by time alone, so no probe can leave it stuck,
    and a failure of a request that began before the last ejection is not counted again, so
    requests that hung during an outage do not re-eject a recovered backend."""

    def __init__(self, config: CircuitConfig) -> None:
        self.config = config
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_at = -math.inf
        self.ejected_until = 0.0  # time.monotonic() is above it from the start

    @property
    def state(self) -> str:
        return "open" if time.monotonic() < self.ejected_until else "closed"

    def allow(self) -> bool:
        return time.monotonic() >= self.ejected_until

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self, started: float) -> None:
        """A failure of a request sent at ``started`` (``time.monotonic()``)."""
        if started < self.ejected_at:
            return
        self.consecutive_failures += 1
        if self.consecutive_failures < self.config.failures:
            return
        now = time.monotonic()
        healthy_for = max(0.0, now - self.ejected_until)
        # each reset_s spent healthy since the last ejection forgives one earlier ejection
        self.ejections = max(0, self.ejections - int(healthy_for // self.config.reset_s)) + 1
        length = min(self.config.reset_s * self.ejections, self.config.max_ejection_s)
        self.ejected_at, self.ejected_until = now, now + length
        self.consecutive_failures = 0


@dataclass(frozen=True)
class Relayed:
    """A relayed endpoint's answer as the backend gave it, and its usage (estimated if it gave none)."""

    document: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool


@dataclass
class Upstream:
    """One configured backend and its client state."""

    config: BackendConfig
    retry: RetryConfig
    session: aiohttp.ClientSession
    breaker: CircuitBreaker
    api_key: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        self._headers = {"Content-Type": "application/json"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._base = self.config.base_url.rstrip("/")
        self._price = self.config.price  # built once: cost() runs on every answer
        self.in_flight = 0
        self.retries_in_flight = 0
        self.latency_s: float | None = None  # moving average of its answered calls' time (None: none yet)

    @property
    def name(self) -> str:
        return self.config.name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self._price.cost(prompt_tokens, completion_tokens)

    async def complete(
        self, body: dict[str, Any], n: int, deadline: Deadline = NO_DEADLINE, *, first_sample: int = 0
    ) -> Completion:
        """n samples: one request asking for n where the backend honours it, else n at once.
        ``first_sample`` numbers them (sent as FIRST_SAMPLE_HEADER, which a replay backend serves
        recorded samples from and any other server ignores)."""
        started = time.monotonic()
        completion = await self._complete(body, n, deadline, first_sample)
        elapsed = time.monotonic() - started
        self.latency_s = elapsed if self.latency_s is None else 0.8 * self.latency_s + 0.2 * elapsed
        return completion

    async def _complete(self, body: dict[str, Any], n: int, deadline: Deadline, first_sample: int) -> Completion:
        if n == 1 or self.config.supports_n:
            result = await self._retried(deadline, lambda: self._post(body | ({"n": n} if n > 1 else {}), first_sample))
            if len(result.choices) < n:
                raise UpstreamError(self.name, f"asked for {n} choices, got {len(result.choices)}")
            return result
        single = {k: v for k, v in body.items() if k != "n"}

        def part(k: int) -> Callable[[], Awaitable[Completion]]:
            return lambda: self._post(single, first_sample + k)

        parts = await asyncio.gather(*(self._retried(deadline, part(k)) for k in range(n)))
        return Completion(
            choices=[c for p in parts for c in p.choices],
            document=parts[0].document,
            prompt_tokens=sum(p.prompt_tokens for p in parts),
            completion_tokens=sum(p.completion_tokens for p in parts),
            sample_tokens=tuple(t for p in parts for t in p.sample_tokens),
            requests=n,
            tokens_estimated=any(p.tokens_estimated for p in parts),
        )

    async def stream(
        self, body: dict[str, Any], deadline: Deadline = NO_DEADLINE
    ) -> tuple[dict[str, Any], AsyncGenerator[dict[str, Any], None]]:
        """Open a stream and read its first chunk, so a failure before it can fail over.
        Returns the first chunk and an iterator of the rest (closing it closes the upstream)."""
        return await self._retried(deadline, lambda: self._open_stream(body))

    async def _retried(self, deadline: Deadline, try_once: Callable[[], Awaitable[T]]) -> T:
        """``try_once`` within the per-try timeout, retried after connection errors, 408, 409, 429
        and 5xx while tries, the deadline and the retry budget allow. A timeout is not retried
        here: the deadline is shared, and the next option may answer in time."""
        wait, retrying = self.retry.backoff_s, False
        self.in_flight += 1
        try:
            for attempt in range(self.retry.attempts):
                budget = deadline.remaining()
                if budget <= 0:
                    raise DeadlinePassed(self.name)
                per_try = min(self.config.timeout_s, budget)
                try:
                    async with asyncio.timeout(per_try):
                        return await try_once()
                except TimeoutError:
                    if per_try < self.config.timeout_s:
                        raise DeadlinePassed(
                            self.name, f"the request's deadline passed after {per_try:.3g} s on this backend"
                        ) from None
                    raise UpstreamError(self.name, f"timed out after {per_try:.3g} s") from None
                except _Retryable as failure:
                    last = failure.reason
                    if attempt + 1 == self.retry.attempts:
                        break
                    pause = max(wait, failure.retry_after or 0.0)
                    if (failure.retry_after or 0.0) > self.retry.max_retry_after_s:
                        last += f"; Retry-After {failure.retry_after:g} s is too long to wait"
                        break
                    if pause >= deadline.remaining():
                        last += "; no time left to retry before the deadline"
                        break
                    if not retrying:
                        allowed = max(self.retry.budget_min, self.retry.budget_ratio * self.in_flight)
                        if self.retries_in_flight >= allowed:
                            last += "; retry budget spent"
                            break
                        retrying = True
                        self.retries_in_flight += 1
                    await asyncio.sleep(pause)
                    wait *= 2
            raise UpstreamError(self.name, last)
        finally:
            self.in_flight -= 1
            self.retries_in_flight -= retrying

    async def relay(self, path: str, body: dict[str, Any], deadline: Deadline = NO_DEADLINE) -> Relayed:
        """POST ``body`` to another OpenAI endpoint of the backend (``/embeddings``,
        ``/completions``) under its model id, with the same retries; its JSON answer and usage."""

        async def once() -> Relayed:
            document = await self._json(await self._request(body, stream=None, path=path))
            prompt, completion, estimated = usage_tokens(
                document.get("usage") if isinstance(document, dict) else None,
                prompt=lambda: estimate_tokens(json.dumps(body.get("input", body.get("prompt", "")))),
                completion=lambda: 0,
            )
            if not isinstance(document, dict):
                raise UpstreamError(self.name, "answer is not a JSON object")
            return Relayed(document, prompt, completion, estimated)

        return await self._retried(deadline, once)

    async def _request(
        self, body: dict[str, Any], *, stream: bool | None, first_sample: int = 0, path: str = "/chat/completions"
    ) -> aiohttp.ClientResponse:
        """One POST; the response is returned unread when it succeeded. ``stream`` None: the
        endpoint takes no stream field."""
        payload = server_quirks(self.config.kind, body) | {"model": self.config.upstream_model}
        if stream is not None:
            payload["stream"] = stream
        try:
            # No redirects: a backend is its configured URL; following one would send the prompt
            # to another origin.
            response = await self.session.post(
                self._base + path,
                data=json_bytes(payload),
                headers=self._headers | {FIRST_SAMPLE_HEADER: str(first_sample)} if first_sample else self._headers,
                timeout=_NO_CLIENT_TIMEOUT,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        if 300 <= response.status < 400:
            response.release()
            raise UpstreamError(self.name, f"HTTP {response.status} redirect, not followed; check base_url")
        if response.status < 400:
            return response
        async with response:
            try:
                raw = await response.content.read(_ERROR_BODY_BYTES)
            except aiohttp.ClientError:
                raw = b""
        status = response.status
        said = _error_text(raw, self.api_key)
        if status in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status}{said}", _retry_after(response.headers.get("retry-after")))
        if status >= 500 or status in _BACKEND_FAULT_STATUS:
            raise UpstreamError(self.name, f"HTTP {status}{said}")
        raise UpstreamRejected(self.name, status, _error_fields(raw, status))

    async def _post(self, body: dict[str, Any], first_sample: int = 0) -> Completion:
        document = await self._json(await self._request(body, stream=False, first_sample=first_sample))
        try:
            choices = document["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                raise ValueError("choices is not a list of objects")
            texts = [answer_text(c["message"]) for c in choices]
            if not all(isinstance(c.get("finish_reason") or "", str) for c in choices):
                raise ValueError("finish_reason is not a string")
            prompt_tokens, completion_tokens, estimated = usage_tokens(
                document.get("usage"),
                prompt=lambda: estimate_tokens(_body_text(body)),
                completion=lambda: sum(estimate_tokens(t) for t in texts),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(self.name, f"malformed chat completion ({exc})") from exc
        return Completion(
            choices=choices,
            document=document,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            sample_tokens=split_tokens(completion_tokens, texts),
            tokens_estimated=estimated,
        )

    async def _json(self, response: aiohttp.ClientResponse) -> Any:
        """A successful response's JSON document, read up to max_response_bytes."""
        limit = self.config.max_response_bytes
        raw = bytearray()
        try:
            async with response:
                async for piece in response.content.iter_chunked(65_536):
                    raw += piece
                    if len(raw) > limit:
                        raise UpstreamError(self.name, f"response is over max_response_bytes ({limit})")
        except aiohttp.ClientError as exc:
            raise UpstreamError(self.name, f"response broke ({type(exc).__name__})") from exc
        try:
            document = parse_json(raw)
        except (ValueError, RecursionError) as exc:
            raise UpstreamError(self.name, "response is not JSON") from exc
        if b"\\ud" in raw or b"\\uD" in raw:  # maybe a lone surrogate, which no client could be sent
            document = _encodable(document)
        return document

    async def _open_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], AsyncGenerator[dict[str, Any], None]]:
        response = await self._request(body, stream=True)
        events = _sse_events(response)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise UpstreamError(self.name, "stream ended before its first chunk") from None
        except (aiohttp.ClientError, ValueError) as exc:
            await events.aclose()
            raise UpstreamError(self.name, f"stream broke before its first chunk ({type(exc).__name__})") from exc
        return first, events


def server_quirks(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as a server of ``kind`` takes it. llama-cpp-python answers HTTP 500 to an
    assistant message that has tool calls and no ``content`` (OpenAI's own form): it gets ``""``."""
    if kind != "llama-cpp" or not any(
        m.get("content") is None for m in body.get("messages", []) if isinstance(m, dict)
    ):
        return body
    messages = [
        m | {"content": ""} if isinstance(m, dict) and m.get("role") == "assistant" and m.get("content") is None else m
        for m in body["messages"]
    ]
    return body | {"messages": messages}


def _encodable(value: Any) -> Any:
    """``value`` with every string's lone surrogates replaced, so it can be encoded as UTF-8."""
    if isinstance(value, str):
        return without_lone_surrogates(value)
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _error_text(raw: bytes, secret: str | None) -> str:
    """What a failing upstream said, for the client's 502 and the log: its OpenAI-style error
    message or the start of its body, on one line, at most 300 characters, without our key."""
    try:
        error = parse_json(raw).get("error")
        said = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError, RecursionError):
        said = None
    if not isinstance(said, str):
        said = raw.decode("utf-8", "replace")
    said = " ".join(without_lone_surrogates(said).split())
    if secret:
        said = said.replace(secret, "[key]")
    return f" ({said[:300]})" if said else ""


def _error_fields(raw: bytes, status: int) -> dict[str, str | None]:
    """The upstream's OpenAI-style error, its string fields only, or a plain one of our own."""
    fields: dict[str, str | None] = {
        "message": f"the backend rejected the request (HTTP {status})",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    try:
        error = parse_json(raw).get("error")
    except (ValueError, AttributeError, RecursionError):
        return fields
    if isinstance(error, dict):
        for key in fields:
            if isinstance(error.get(key), str):
                fields[key] = without_lone_surrogates(error[key])[:2000]
    return fields


STREAM_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of an SSE stream until [DONE]; closing it closes the connection.
    A data line that is not UTF-8 JSON of an object raises ValueError; other lines (comments,
    event names) are skipped."""
    try:
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            chunk = parse_json(data)  # invalid UTF-8 is a ValueError too
            if not isinstance(chunk, dict):
                # ValueError, like invalid JSON: one kind of malformed stream for the callers
                raise ValueError(f"stream chunk is a JSON {type(chunk).__name__}, not an object")  # noqa: TRY004
            yield chunk
    finally:
        response.release()


MAX_TOKENS_REPORTED = 10**9  # more than any context window: a larger count is a broken upstream


def answer_text(message: Any) -> str:
    """The text of an answer as selectors, the router's log and the accounting see it: the content,
    then any tool calls as canonical JSON (name and parsed arguments, keys sorted), so samples that
    call the same tool with the same arguments agree. ValueError if the message is malformed."""
    if not isinstance(message, dict):
        raise ValueError("message is not an object")  # noqa: TRY004 -- one error for a malformed answer
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("message content is not a string")
    calls = message.get("tool_calls")
    if not calls:
        return content or ""
    if not isinstance(calls, list):
        raise ValueError("tool_calls is not a list")  # noqa: TRY004
    canonical = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ValueError("a tool call has no function object")  # noqa: TRY004
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                pass  # compared as the text it is
        canonical.append({"name": function.get("name"), "arguments": arguments})
    calls_text = json.dumps({"tool_calls": canonical}, sort_keys=True, ensure_ascii=False)
    return f"{content}\n{calls_text}" if content else calls_text


def usage_tokens(usage: Any, *, prompt: Callable[[], int], completion: Callable[[], int]) -> tuple[int, int, bool]:
    """(prompt, completion) tokens of an upstream's ``usage``, and whether either was estimated
    (a count it leaves out is). A count that is not a whole number from 0 to 10^9, or a ``usage``
    that is not an object, raises ValueError: costs and budgets must not take an upstream's garbage."""
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise ValueError("usage is not an object")  # noqa: TRY004 -- one error for malformed usage
    counts, estimated = [], False
    for key, estimate in (("prompt_tokens", prompt), ("completion_tokens", completion)):
        value = usage.get(key)
        if value is None:
            value, estimated = estimate(), True
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_REPORTED:
            raise ValueError(f"usage.{key} is not a token count: {str(value)[:40]!r}")
        counts.append(value)
    return counts[0], counts[1], estimated


def _body_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content") or "") for m in body.get("messages", []))


def estimate_tokens(text: str) -> int:
    """Characters / 4, for upstreams that report no usage."""
    return math.ceil(len(text) / 4)
