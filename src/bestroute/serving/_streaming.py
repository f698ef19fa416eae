"""Streaming answers as server-sent events: an upstream's stream relayed chunk by chunk (with
stall and deadline watch), or a finished completion replayed as one."""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from .._json import json_bytes
from ..backends import STREAM_ERRORS, Deadline, DeadlinePassed, Upstream, UpstreamError, estimate_tokens, usage_tokens
from ..selection import Call, Drawn, execute, run_now
from ._judging import FirstSample
from ._metrics import GatewayMetrics
from ._planning import Attempt
from ._recording import RequestRecord
from ._sampling import CircuitOpen, Run, hold_against
from .protocol import ChatCompletionRequest


class _Streamed:
    """A relayed stream's one call, already made, as the executor's SampleSource."""

    def __init__(self, drawn: Drawn) -> None:
        self.drawn = drawn

    async def draw(self, calls: Sequence[Call]) -> list[Drawn]:
        return [self.drawn]


def streamed_run(
    attempt: Attempt,
    *,
    texts: tuple[str, ...] = (),
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    latency_s: float = 0.0,
    error: UpstreamError | None = None,
    tokens_estimated: bool = False,
) -> Run:
    """The run of a one-sample option whose answer was relayed as a stream (or whose stream
    failed to open), recorded by the executor like any other."""
    call = Call(attempt.option.model, 0, 1)
    drawn = Drawn(
        call,
        texts=texts if error is None else (),
        input_tokens=input_tokens,
        output_tokens=(output_tokens,) if error is None else (),
        cost_usd=cost_usd,
        latency_s=latency_s,
        requests=0 if isinstance(error, CircuitOpen) else 1,
        error=str(error) if error is not None else None,
        tokens_estimated=tokens_estimated,
    )
    execution = run_now(execute(attempt.option, source=_Streamed(drawn), judge=FirstSample(), reference=None))
    return Run(attempt, execution, {}, error)


class StreamedMessage:
    """The assistant message a stream's chunks add up to: its text for accounting and the log
    (content, and the names and argument pieces of tool calls), and the message as a client sends
    it back next turn (content and tool calls assembled by index), whose hash continues the
    conversation. Anything not shaped as OpenAI's deltas is ignored."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._content: list[str] = []
        self._calls: dict[int, tuple[list[str], list[str]]] = {}  # index -> name pieces, argument pieces

    def add(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
                self._content.append(delta["content"])
            calls = delta.get("tool_calls")
            for position, call in enumerate(calls if isinstance(calls, list) else []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                index = call.get("index", position)
                name, arguments = self._calls.setdefault(index if isinstance(index, int) else position, ([], []))
                for pieces, key in ((name, "name"), (arguments, "arguments")):
                    if isinstance(function.get(key), str):
                        pieces.append(function[key])
                        self._text.append(function[key])

    @property
    def text(self) -> str:
        return "".join(self._text)

    def message(self) -> dict[str, Any]:
        calls = [
            {"type": "function", "function": {"name": "".join(name), "arguments": "".join(arguments)}}
            for _, (name, arguments) in sorted(self._calls.items())
        ]
        return {"role": "assistant", "content": "".join(self._content)} | ({"tool_calls": calls} if calls else {})


async def relay(
    request: ChatCompletionRequest,
    attempt: Attempt,
    upstream: Upstream,
    first: dict[str, Any],
    rest: AsyncGenerator[dict[str, Any], None],
    *,
    deadline: Deadline,
    started: float,
    metrics: GatewayMetrics,
    finish: Callable[[Run, int, str | None, StreamedMessage], RequestRecord],
    request_id: str,
) -> AsyncIterator[bytes]:
    """Relay ``upstream``'s stream; one that stalls longer than the backend's ``stream_idle_s``,
    breaks, or outlives the deadline ends with an ``error`` event (and counts against the backend
    unless it was the deadline). ``finish`` records the request however the stream ends, a
    client that goes away included (499); the last chunk carries the record's usage and details."""
    streamed = StreamedMessage()
    usage: Any = None
    status, error_text = 499, "client disconnected"  # until the stream ends one way or another
    failure: UpstreamError | None = None
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            usage = chunk.get("usage") or usage
            streamed.add(chunk)
            chunk |= {"id": request_id, "model": attempt.option.model}
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
        answer = streamed.text
        estimates = {
            "prompt": lambda: estimate_tokens(request.prompt_text),
            "completion": lambda: estimate_tokens(answer),
        }
        notes: tuple[str, ...] = ()
        try:
            prompt_tokens, completion_tokens, estimated = usage_tokens(usage, **estimates)
        except ValueError as exc:  # the answer has been relayed; only its accounting is estimated
            notes = (f"usage estimated: {exc}",)
            prompt_tokens, completion_tokens, estimated = usage_tokens(None, **estimates)
        run = streamed_run(
            attempt,
            texts=(answer,),
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cost_usd=upstream.cost(prompt_tokens, completion_tokens),
            latency_s=time.monotonic() - started,
            tokens_estimated=estimated,
        )
        if notes:
            run = replace(run, execution=replace(run.execution, notes=notes))
        record = finish(run, status, error_text or None, streamed)
    if status == 200:
        yield sse(
            {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": attempt.option.model,
                "choices": [],
                "usage": record.usage(),
                "bestroute": record.details(),
            }
        )
        yield b"data: [DONE]\n\n"


def sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json_bytes(document) + b"\n\n"


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
