"""Streaming answers as server-sent events: an upstream's stream relayed chunk by chunk (with
stall and deadline watch), or a finished completion replayed as one."""

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ..backends import STREAM_ERRORS, Deadline, DeadlinePassed, UpstreamError, estimate_tokens, usage_tokens
from ._metrics import GatewayMetrics
from ._recording import Outcome, Recorder
from ._sampling import hold_against
from .protocol import ChatCompletionRequest


async def relay(
    request: ChatCompletionRequest,
    outcome: Outcome,
    first: dict[str, Any],
    rest: AsyncGenerator[dict[str, Any], None],
    *,
    deadline: Deadline,
    started: float,
    recorder: Recorder,
    metrics: GatewayMetrics,
) -> AsyncIterator[bytes]:
    """Relay the stream of ``outcome.attempt``'s backend; one that stalls longer than the
    backend's ``stream_idle_s``, breaks, or outlives the deadline ends with an ``error`` event
    (and counts against the backend unless it was the deadline). The row is recorded however
    the stream ends, a client that goes away included (499)."""
    assert outcome.attempt is not None
    upstream = outcome.attempt.upstream
    text: list[str] = []
    usage: Any = None
    status, error_text = 499, "client disconnected"  # until the stream ends one way or another
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            usage = chunk.get("usage") or usage
            text.append(delta_text(chunk))
            chunk |= {"id": outcome.request_id, "model": upstream.name}
            yield sse(chunk)
            idle = min(upstream.config.stream_idle_s, deadline.remaining())
            try:
                async with asyncio.timeout(max(idle, 0.0)):
                    chunk = await anext(rest, None)
            except TimeoutError:
                if idle < upstream.config.stream_idle_s:
                    raise DeadlinePassed(upstream.name, "the request's deadline passed mid-stream") from None
                raise UpstreamError(upstream.name, f"stream stalled: no chunk for {idle:g} s") from None
        status, error_text = 200, ""
    except (UpstreamError, *STREAM_ERRORS) as exc:  # after the first chunk: the client sees an error event
        failure = (
            exc
            if isinstance(exc, UpstreamError)
            else UpstreamError(upstream.name, f"stream broke after it started ({type(exc).__name__})")
        )
        hold_against(upstream, failure, started, metrics)
        status = 504 if isinstance(failure, DeadlinePassed) else 502
        error_text = str(failure)
        yield sse({"error": {"message": error_text, "type": "timeout" if status == 504 else "upstream_error"}})
    finally:
        await rest.aclose()
        answer = "".join(text)
        estimates = {
            "prompt": lambda: estimate_tokens(request.prompt_text()),
            "completion": lambda: estimate_tokens(answer),
        }
        try:
            prompt_tokens, completion_tokens = usage_tokens(usage, **estimates)
        except ValueError as exc:  # the answer has been relayed; only its accounting is estimated
            outcome.fallbacks.append(f"usage estimated: {exc}")
            prompt_tokens, completion_tokens = usage_tokens(None, **estimates)
        outcome.charge(upstream, prompt_tokens, completion_tokens)
        outcome.call_input_tokens, outcome.response_tokens = prompt_tokens, completion_tokens
        recorder.record(request, outcome, status, error=error_text or None, response=answer)
    if status == 200:
        yield sse(
            {
                "id": outcome.request_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": upstream.name,
                "choices": [],
                "usage": outcome.usage(),
                "bestroute": outcome.details(),
            }
        )
        yield b"data: [DONE]\n\n"


def delta_text(chunk: dict[str, Any]) -> str:
    """The text a stream chunk adds, for accounting and the log: content, and the names and
    argument pieces of tool calls; anything not shaped as OpenAI's deltas is ignored."""
    choices = chunk.get("choices")
    text: list[str] = []
    for choice in choices if isinstance(choices, list) else []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        calls = delta.get("tool_calls")
        functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        pieces = [delta.get("content")] + [
            f.get(k) for f in functions if isinstance(f, dict) for k in ("name", "arguments")
        ]
        text.extend(p for p in pieces if isinstance(p, str))
    return "".join(text)


def sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


async def replay(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """A finished completion as a stream: the whole message as one delta (tool calls with their
    ``index``, as streamed tool calls have), then finish, usage, [DONE]."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    choice = body["choices"][0]
    delta = {"role": "assistant"} | choice["message"]
    if delta.get("tool_calls"):
        delta["tool_calls"] = [call | {"index": i} for i, call in enumerate(delta["tool_calls"])]
    content = {"index": 0, "delta": delta, "finish_reason": None}
    if choice.get("logprobs") is not None:
        content["logprobs"] = choice["logprobs"]
    yield sse(base | {"choices": [content]})
    yield sse(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    yield sse(base | {"choices": [], "usage": body["usage"], "bestroute": body["bestroute"]})
    yield b"data: [DONE]\n\n"
