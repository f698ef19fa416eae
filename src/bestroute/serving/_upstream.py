"""Calls to OpenAI-compatible upstreams: retries with backoff, a circuit breaker per backend,
n samples as one request or n concurrent ones, and streams that fail over before their first chunk."""

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ._config import BackendConfig, CircuitConfig, RetryConfig

_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class UpstreamError(Exception):
    """A backend did not answer usefully. The message names the backend, never its key."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r}: {reason}")
        self.backend = backend


@dataclass
class Completion:
    """What one backend returned for one (model, n) option, over all its requests."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one probe through
    (half-open); a success closes it, a failure opens it again."""

    def __init__(self, config: CircuitConfig) -> None:
        self.config = config
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.config.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive_failures, self.opened_at, self._probing = 0, None, False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self._probing or self.consecutive_failures >= self.config.failures:
            self.opened_at, self._probing = time.monotonic(), False


@dataclass
class Upstream:
    """One configured backend and its client state."""

    config: BackendConfig
    retry: RetryConfig
    session: aiohttp.ClientSession
    breaker: CircuitBreaker
    api_key: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        self._headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def name(self) -> str:
        return self.config.name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.config.input_usd_per_mtok
                + completion_tokens * self.config.output_usd_per_mtok) / 1e6

    async def complete(self, body: dict[str, Any], n: int) -> Completion:
        """n samples: one request asking for n where the backend honours it, else n at once."""
        if n == 1 or self.config.supports_n:
            result = await self._post(body | ({"n": n} if n > 1 else {}))
            if len(result.texts) < n:
                raise UpstreamError(self.name, f"asked for {n} choices, got {len(result.texts)}")
            return result
        single = {k: v for k, v in body.items() if k != "n"}
        parts = await asyncio.gather(*(self._post(single) for _ in range(n)))
        return Completion(texts=[t for p in parts for t in p.texts],
                          finish_reasons=[f for p in parts for f in p.finish_reasons],
                          prompt_tokens=sum(p.prompt_tokens for p in parts),
                          completion_tokens=sum(p.completion_tokens for p in parts))

    async def _post(self, body: dict[str, Any]) -> Completion:
        response = await self._send(body, stream=False)
        try:
            async with response:
                document = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(self.name, f"response broke ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise UpstreamError(self.name, "response is not JSON") from exc
        try:
            choices = document["choices"]
            texts = [_content(c["message"]) for c in choices]
            finish_reasons = [c.get("finish_reason") or "stop" for c in choices]
            if not all(isinstance(f, str) for f in finish_reasons):
                raise ValueError("finish_reason is not a string")
            prompt_tokens, completion_tokens = usage_tokens(
                document.get("usage"), prompt=lambda: estimate_tokens(_body_text(body)),
                completion=lambda: sum(estimate_tokens(t) for t in texts))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(self.name, f"malformed chat completion ({exc})") from exc
        return Completion(texts=texts, finish_reasons=finish_reasons, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens)

    async def _send(self, body: dict[str, Any], *, stream: bool) -> aiohttp.ClientResponse:
        """POST with retries on connection errors, timeouts, 429 and 5xx; the response is returned
        unread. A plain request must finish within the timeout; a stream must not stall longer."""
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        payload = body | {"model": self.config.upstream_model, "stream": stream}
        limit = self.config.timeout_s
        timeout = (aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit) if stream
                   else aiohttp.ClientTimeout(total=limit))
        wait = self.retry.backoff_s
        last = "no attempt"
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(wait)
                wait *= 2
            try:
                response = await self.session.post(url, json=payload, headers=self._headers, timeout=timeout)
            except TimeoutError:
                last = "timed out"
                continue
            except aiohttp.ClientError as exc:
                last = f"connection failed ({type(exc).__name__})"
                continue
            if response.status < 400:
                return response
            response.release()
            last = f"HTTP {response.status}"
            if response.status not in _RETRYABLE_STATUS:
                break
        raise UpstreamError(self.name, last)

    async def stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
        """Open a stream and read its first chunk, so a failure before it can fail over.
        Returns the first chunk and an iterator of the rest (closing it closes the upstream)."""
        response = await self._send(body, stream=True)
        events = _sse_events(response)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise UpstreamError(self.name, "stream ended before its first chunk") from None
        except STREAM_ERRORS as exc:
            await events.aclose()
            raise UpstreamError(self.name, f"stream broke before its first chunk ({type(exc).__name__})") from exc
        return first, events


STREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream until [DONE]; closing it closes the connection.
    Anything else (invalid UTF-8 or JSON, a payload that is not an object) raises ValueError."""
    try:
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                # ValueError, like invalid JSON: one kind of malformed stream for the callers
                raise ValueError(f"stream chunk is a JSON {type(chunk).__name__}, not an object")  # noqa: TRY004
            yield chunk
    finally:
        response.release()


MAX_TOKENS_REPORTED = 10**9  # more than any context window: a larger count is a broken upstream


def _content(message: Any) -> str:
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("message content is not a string")
    return content or ""


def usage_tokens(usage: Any, *, prompt: Callable[[], int], completion: Callable[[], int]) -> tuple[int, int]:
    """(prompt, completion) tokens of an upstream's ``usage``; a count it leaves out is estimated.
    A count that is not a whole number from 0 to 10^9, or a ``usage`` that is not an object,
    raises ValueError: costs and budgets must not take an upstream's garbage."""
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise ValueError("usage is not an object")  # noqa: TRY004 -- one error for malformed usage
    counts = []
    for key, estimate in (("prompt_tokens", prompt), ("completion_tokens", completion)):
        value = usage.get(key)
        if value is None:
            value = estimate()
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_REPORTED:
            raise ValueError(f"usage.{key} is not a token count: {str(value)[:40]!r}")
        counts.append(value)
    return counts[0], counts[1]


def _body_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content") or "") for m in body.get("messages", []))


def estimate_tokens(text: str) -> int:
    """Characters / 4, for upstreams that report no usage."""
    return math.ceil(len(text) / 4)
