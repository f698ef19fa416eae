"""Chat completions: route, sample best-of-n, select, fall back, account and log."""

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._exceptions import RouterError
from ..backends import (
    STREAM_ERRORS,
    Completion,
    Deadline,
    DeadlinePassed,
    Upstream,
    UpstreamError,
    UpstreamRejected,
    estimate_tokens,
    usage_tokens,
)
from ..routers import Router
from ..selection import OnlineSelector, Option, stage_draws, stage_samples, stage_verdict
from ._budgets import Budgets
from ._config import GatewayConfig
from ._errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    UpstreamFailed,
    UpstreamRejectedRequest,
)
from ._feedback import AnsweredRequests
from ._log import DecisionLog
from ._metrics import GatewayMetrics
from ._reload import ArtifactInfo
from .protocol import ChatCompletionRequest

ROUTED_MODEL = "bestroute"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the error code of OpenAI, vLLM and llama.cpp


@dataclass
class Attempt:
    """One option to try: a backend and how many samples to draw from it. A mixture or escalating
    ``option`` draws from each of its models (``upstream`` is then the one whose answer is kept)."""

    upstream: Upstream
    n: int
    label: str
    option: Option | None = None


@dataclass
class Plan:
    attempts: list[Attempt]
    threshold: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    routed: bool = True


@dataclass
class Outcome:
    """What was decided and paid for one request."""

    request_id: str
    plan: Plan
    started: float
    client: str | None  # fingerprint of the client's API key
    attempt: Attempt | None = None
    fallbacks: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    selected: int = 0
    call_input_tokens: int | None = None
    response_tokens: int | None = None
    rejection: UpstreamRejected | None = None  # a backend's context window was too small
    escalation: dict[str, Any] | None = None  # a mixture or escalating option's stages

    def charge(self, upstream: Upstream, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += upstream.cost(prompt_tokens, completion_tokens)

    def headers(self) -> dict[str, str]:
        assert self.attempt is not None
        headers = {
            "x-bestroute-model": self.attempt.upstream.name,
            "x-bestroute-n": str(self.attempt.n),
            "x-bestroute-cost-usd": f"{self.cost_usd:.8f}",
            "x-request-id": self.request_id,
        }
        if self.plan.threshold is not None:
            headers["x-bestroute-threshold"] = f"{self.plan.threshold:g}"
        if self.escalation is not None:
            headers["x-bestroute-escalated"] = "true" if self.escalation["escalated"] else "false"
            if self.escalation["confidence"] is not None:
                headers["x-bestroute-confidence"] = f"{self.escalation['confidence']:.4f}"
        return headers

    def details(self, selector: str) -> dict[str, Any]:
        assert self.attempt is not None
        return {
            "option": self.attempt.label,
            "model": self.attempt.upstream.name,
            "n": self.attempt.n,
            "threshold": self.plan.threshold,
            "routed": self.plan.routed,
            "scores": self.plan.scores,
            "fallbacks": self.fallbacks,
            "selector": selector if self.attempt.n > 1 else None,
            "selected_sample": self.selected,
            "cost_usd": self.cost_usd,
            "escalation": self.escalation,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class ChatService:
    """The logic behind POST /v1/chat/completions."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        router: Router,
        upstreams: dict[str, Upstream],
        selector: OnlineSelector,
        log: DecisionLog,
        metrics: GatewayMetrics,
        answered: AnsweredRequests,
        budgets: Budgets,
        artifact: ArtifactInfo,
    ) -> None:
        self.config, self.router, self.upstreams, self.artifact = config, router, upstreams, artifact
        self.selector, self.log, self.metrics, self.answered = selector, log, metrics, answered
        self.budgets = budgets
        # Options the gateway can serve: active in the router, each of its models has a backend
        # that allows that many samples.
        self._available = router.active_ & np.array(
            [
                all(m in upstreams and o.stages[-1].n <= upstreams[m].config.max_n for m in o.stages[-1].models)
                for o in router.options_
            ]
        )
        self._labels = [(router.options_[o].label, int(o)) for o in np.flatnonzero(self._available)]
        self._rule = router.rule
        self._default_knob = config.threshold if config.threshold is not None else router.default_knob()

    def _new_id(self) -> str:
        """A completion id; it starts with this replica's id, so shared budgets can tell its rows."""
        return f"chatcmpl-{self.budgets.replica}{uuid.uuid4().hex[:24]}"

    # ------------------------------------------------------------------ planning
    def plan(self, request: ChatCompletionRequest) -> Plan:
        if request.model == ROUTED_MODEL or request.model.startswith(ROUTED_MODEL + ":"):
            if request.n != 1:
                raise InvalidRequest(
                    "routed requests return one choice; the router decides how many samples to draw", param="n"
                )
            return self._route(request, self._parse_threshold(request.model))
        upstream = self.upstreams.get(request.model)
        if upstream is None:
            raise ModelNotFound(
                f"model {request.model!r} does not exist; use 'bestroute', "
                "'bestroute:<threshold>' or a configured backend",
                param="model",
                code="model_not_found",
            )
        if not 1 <= request.n <= upstream.config.max_n:
            raise InvalidRequest(f"n must be between 1 and {upstream.config.max_n} for {upstream.name}", param="n")
        return Plan(attempts=[Attempt(upstream, request.n, upstream.name)], routed=False)

    def _parse_threshold(self, model: str) -> float:
        if model == ROUTED_MODEL:
            return self._default_knob
        raw = model.split(":", 1)[1]
        try:
            knob = float(raw)
        except ValueError:
            raise InvalidRequest(f"threshold {raw!r} in model name is not a number", param="model") from None
        try:
            return self._rule.check(knob)
        except RouterError as error:
            raise InvalidRequest(str(error), param="model") from None

    def _route(self, request: ChatCompletionRequest, knob: float) -> Plan:
        tic = time.perf_counter()
        scores = self.router.predict([request.prompt_text()])[0]
        order = self._rule.order(scores, knob, self._available)  # its first option is Router.decide's
        self.metrics.routing_seconds.observe(time.perf_counter() - tic)
        options, values = self.router.options_, scores.tolist()
        return Plan(
            attempts=[
                Attempt(
                    self.upstreams[options[o].models[0]],
                    options[o].n,
                    options[o].label,
                    options[o] if options[o].composite else None,
                )
                for o in order
            ],
            threshold=knob,
            scores={label: round(values[o], 6) for label, o in self._labels},
        )

    def _attempts(self, outcome: Outcome) -> Iterator[Attempt]:
        """Options in plan order, skipping backends whose circuit is open or that already failed."""
        tried: set[str] = set()
        for attempt in outcome.plan.attempts:
            names = attempt.option.stages[-1].models if attempt.option is not None else (attempt.upstream.name,)
            if tried.intersection(names):
                continue
            tried.update(names)  # a backend gets one (retried) chance per request
            if not all(self.upstreams[name].breaker.allow() for name in names):
                outcome.fallbacks.append(f"{attempt.label}: circuit open")
                continue
            yield attempt

    def _failed(self, outcome: Outcome, attempt: Attempt, error: UpstreamError, started: float) -> None:
        self._hold_against(attempt.upstream, error, started)
        outcome.fallbacks.append(f"{attempt.label}: {error}")

    def _hold_against(self, upstream: Upstream, error: UpstreamError, started: float) -> None:
        """Only a failure that is the backend's fault counts against its health."""
        if error.counts:
            upstream.breaker.record_failure(started)
            self.metrics.upstream_failures.labels(backend=upstream.name).inc()

    def _ends_request(self, outcome: Outcome, error: UpstreamError) -> bool:
        """Whether a failed attempt ends the request: the deadline passed, or the backend rejected
        the request itself. A routed prompt over a backend's context window goes on to the next
        option, which may have a larger one (the rejection is kept in case none answers)."""
        if isinstance(error, UpstreamRejected):
            if outcome.plan.routed and error.error["code"] == CONTEXT_LENGTH_EXCEEDED:
                outcome.rejection = error
                return False
            return True
        return isinstance(error, DeadlinePassed)

    def _final(self, request: ChatCompletionRequest, outcome: Outcome, error: UpstreamError) -> GatewayError:
        """The client's error when an attempt's failure ends the request: the backend rejected the
        request itself, or the deadline passed."""
        answer: GatewayError
        if isinstance(error, UpstreamRejected):
            answer = UpstreamRejectedRequest(
                error.status,
                error.error["message"] or str(error),
                type_=error.error["type"],
                param=error.error["param"],
                code=error.error["code"],
                backend=error.backend,
            )
        else:
            answer = DeadlineExceeded("the request's deadline passed; tried: " + "; ".join(outcome.fallbacks))
        self._record(request, outcome, answer.status, error=str(error))
        return answer

    # ------------------------------------------------------------- completing
    async def complete(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[dict[str, Any], Outcome]:
        outcome = Outcome(request_id=self._new_id(), plan=plan, started=time.perf_counter(), client=client)
        try:
            for attempt in self._attempts(outcome):
                try:
                    completion = await self._try(request, outcome, attempt, deadline)
                except UpstreamError as error:
                    if self._ends_request(outcome, error):
                        raise self._final(request, outcome, error) from None
                    continue
                return self._answer(request, outcome, completion), outcome
        except asyncio.CancelledError:
            self._record(request, outcome, 499, error="client disconnected")
            raise
        raise self._exhausted(request, outcome)

    async def _try(
        self, request: ChatCompletionRequest, outcome: Outcome, attempt: Attempt, deadline: Deadline
    ) -> Completion:
        """Draw the attempt's samples and select one; an UpstreamError is recorded and re-raised."""
        if attempt.option is not None:
            return await self._try_composite(request, outcome, attempt, deadline)
        started = time.monotonic()
        try:
            completion = await self._draw(request, attempt.upstream, attempt.n, deadline)
        except UpstreamError as error:
            self._failed(outcome, attempt, error, started)
            raise
        attempt.upstream.breaker.record_success()
        outcome.charge(attempt.upstream, completion.prompt_tokens, completion.completion_tokens)
        outcome.attempt = attempt
        calls = 1 if attempt.n == 1 or attempt.upstream.config.supports_n else attempt.n
        outcome.call_input_tokens = completion.prompt_tokens // calls
        if outcome.plan.routed and attempt.n > 1:
            outcome.selected, _ = await self._select(request, outcome, completion.texts, deadline)
        outcome.response_tokens = estimate_tokens(completion.texts[outcome.selected])
        return completion

    async def _select(
        self, request: ChatCompletionRequest, outcome: Outcome, texts: list[str], deadline: Deadline
    ) -> tuple[int, float | None]:
        """The selector's pick and confidence; if it fails, the first sample and no confidence."""
        try:
            async with asyncio.timeout(max(deadline.remaining(), 0.0)):
                return await self.selector.select(request.prompt_text(), texts)
        except UpstreamError as error:
            outcome.fallbacks.append(f"selector: {error}; kept the first sample")
        except TimeoutError:
            outcome.fallbacks.append("selector: the request's deadline passed; kept the first sample")
        return 0, None

    async def _try_composite(
        self, request: ChatCompletionRequest, outcome: Outcome, attempt: Attempt, deadline: Deadline
    ) -> Completion:
        """A mixture or escalating option, as offline evaluation simulates it: stage by stage, the
        samples a stage adds are drawn from each of its models at once, the selector picks among
        all drawn so far (in ``stage_samples`` order) and ``stage_verdict`` keeps the pick, goes on
        to the next stage or asks the reference; every stage is paid for. If a later stage or the
        reference fails, the last pick is kept (and the row says so)."""
        option = attempt.option
        assert option is not None
        order = stage_samples(option)
        drawn: dict[tuple[str, int], tuple[Upstream, Completion, int]] = {}
        stages: list[dict[str, Any]] = []
        picked_sample: tuple[Upstream, Completion, int] | None = None
        confidence: float | None = None
        verdict = "keep"
        for number, (stage, calls) in enumerate(zip(option.stages, stage_draws(option), strict=True)):
            before = outcome.cost_usd
            try:
                results = await self._draw_stage(request, outcome, attempt, calls, deadline)
            except UpstreamError as error:
                if picked_sample is None:
                    raise
                outcome.fallbacks.append(f"stage {number + 1} of {attempt.label}: {error}; kept the pick")
                verdict = "keep"
                break
            for (model, first, _), (upstream, result) in zip(calls, results, strict=True):
                drawn |= {(model, first + k): (upstream, result, k) for k in range(len(result.choices))}
            samples = [drawn[key] for key in order if key in drawn and key[0] in stage.models and key[1] < stage.n]
            picked, confidence = await self._select(request, outcome, [r.texts[k] for _, r, k in samples], deadline)
            picked_sample = samples[picked]
            stages.append(
                {
                    "option": stage.label,
                    "models": list(stage.models),
                    "n": stage.n,
                    "confidence": confidence,
                    "cost_usd": outcome.cost_usd - before,
                }
            )
            verdict = stage_verdict(stage, confidence)
            if verdict != "next":
                break
        assert picked_sample is not None
        upstream, result, k = picked_sample
        answer = Completion(
            choices=[result.choices[k]],
            document=result.document,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        escalated_to_reference = False
        if verdict == "reference":
            reference = self.upstreams[self.router.reference_.model]
            escalated = time.monotonic()
            try:
                answer = await self._draw(request, reference, 1, deadline)
            except UpstreamError as error:
                self._hold_against(reference, error, escalated)
                outcome.fallbacks.append(f"escalation to {reference.name}: {error}; kept the pick")
            else:
                reference.breaker.record_success()
                before = outcome.cost_usd
                outcome.charge(reference, answer.prompt_tokens, answer.completion_tokens)
                stages.append(
                    {
                        "option": "reference",
                        "models": [reference.name],
                        "n": 1,
                        "confidence": None,
                        "cost_usd": outcome.cost_usd - before,
                    }
                )
                upstream, escalated_to_reference = reference, True
        outcome.escalation = {
            "accept": option.accept,
            "confidence": confidence,
            "escalated": escalated_to_reference,
            "stages": stages,
        }
        if option.judged:
            result_label = "escalated" if escalated_to_reference else "accepted" if len(stages) == 1 else "continued"
            self.metrics.escalations.labels(option=attempt.label, outcome=result_label).inc()
        outcome.attempt = Attempt(upstream, 1 if escalated_to_reference else stages[-1]["n"], attempt.label, option)
        outcome.selected = 0
        outcome.call_input_tokens = answer.prompt_tokens
        outcome.response_tokens = estimate_tokens(answer.texts[0])
        return answer

    async def _draw_stage(
        self,
        request: ChatCompletionRequest,
        outcome: Outcome,
        attempt: Attempt,
        calls: list[tuple[str, int, int]],
        deadline: Deadline,
    ) -> list[tuple[Upstream, Completion]]:
        """One stage's calls, (model, first sample, samples) each, at once; all are paid for. If
        any fails, its error is recorded against its backend and raised."""
        upstreams = [self.upstreams[model] for model, _, _ in calls]
        started = time.monotonic()
        results = await asyncio.gather(
            *(self._draw(request, u, count, deadline) for u, (_, _, count) in zip(upstreams, calls, strict=True)),
            return_exceptions=True,
        )
        failures = [(u, r) for u, r in zip(upstreams, results, strict=True) if isinstance(r, BaseException)]
        for upstream, failure in failures:
            if not isinstance(failure, UpstreamError):
                raise failure
            self._hold_against(upstream, failure, started)
        drawn = [(u, r) for u, r in zip(upstreams, results, strict=True) if isinstance(r, Completion)]
        for upstream, result in drawn:
            upstream.breaker.record_success()
            outcome.charge(upstream, result.prompt_tokens, result.completion_tokens)
        if failures:
            error = failures[0][1]
            assert isinstance(error, UpstreamError)
            outcome.fallbacks.append(f"{attempt.label}: {error}")
            raise error
        return drawn

    async def _draw(self, request: ChatCompletionRequest, upstream: Upstream, n: int, deadline: Deadline) -> Completion:
        body = request.upstream_body(upstream.config.upstream_model, n=n, stream=False)
        return await upstream.complete(body, n, deadline)

    def _answer(self, request: ChatCompletionRequest, outcome: Outcome, completion: Completion) -> dict[str, Any]:
        """The chat.completion body: the upstream's, with routed requests getting the selected
        choice and direct ones all, each as the upstream sent it (tool calls, refusal, logprobs);
        only ``id``, ``model``, ``usage``, the choices' ``index`` and ``bestroute`` are the gateway's."""
        assert outcome.attempt is not None
        picked = range(len(completion.choices)) if not outcome.plan.routed else [outcome.selected]
        choices = [
            completion.choices[k] | {"index": i, "finish_reason": completion.choices[k].get("finish_reason") or "stop"}
            for i, k in enumerate(picked)
        ]
        self._record(request, outcome, 200, response=completion.texts[picked[0]])
        return completion.document | {
            "id": outcome.request_id,
            "object": "chat.completion",
            "created": completion.document.get("created") or int(time.time()),
            "model": outcome.attempt.upstream.name,
            "choices": choices,
            "usage": outcome.usage(),
            "bestroute": outcome.details(self.selector.name),
        }

    def _exhausted(self, request: ChatCompletionRequest, outcome: Outcome) -> GatewayError:
        if outcome.rejection is not None:
            return self._final(request, outcome, outcome.rejection)
        error = UpstreamFailed("no backend could answer: " + ("; ".join(outcome.fallbacks) or "none available"))
        self._record(request, outcome, error.status, error=error.message)
        return error

    # -------------------------------------------------------------- streaming
    async def stream(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[Outcome, AsyncIterator[bytes]]:
        """Start a stream. One sample: the upstream's stream is relayed, failing over to the next
        option while no chunk has arrived. n samples: all are drawn, the selected one is streamed."""
        if not plan.routed and request.n > 1:
            raise InvalidRequest("streaming returns one choice; use n = 1 or stream = false", param="n")
        outcome = Outcome(request_id=self._new_id(), plan=plan, started=time.perf_counter(), client=client)
        for attempt in self._attempts(outcome):
            try:
                if attempt.n > 1 or attempt.option is not None:  # drawn and selected, then streamed
                    completion = await self._try(request, outcome, attempt, deadline)
                    return outcome, _replay(self._answer(request, outcome, completion))
                body = request.upstream_body(attempt.upstream.config.upstream_model, n=1, stream=True)
                started = time.monotonic()
                try:
                    first, rest = await attempt.upstream.stream(body, deadline)
                except UpstreamError as error:
                    self._failed(outcome, attempt, error, started)
                    raise
            except UpstreamError as error:
                if self._ends_request(outcome, error):
                    raise self._final(request, outcome, error) from None
                continue
            attempt.upstream.breaker.record_success()
            outcome.attempt = attempt
            return outcome, self._relay(request, outcome, first, rest, deadline, started)
        raise self._exhausted(request, outcome)

    async def _relay(
        self,
        request: ChatCompletionRequest,
        outcome: Outcome,
        first: dict[str, Any],
        rest: AsyncGenerator[dict[str, Any], None],
        deadline: Deadline,
        started: float,
    ) -> AsyncIterator[bytes]:
        """Relay the stream; one that stalls longer than the backend's ``stream_idle_s``, breaks, or
        outlives the deadline ends with an ``error`` event (and counts against the backend unless
        it was the deadline)."""
        assert outcome.attempt is not None
        upstream = outcome.attempt.upstream
        text: list[str] = []
        usage: Any = None
        status, error_text = 499, "client disconnected"  # until the stream ends one way or another
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                usage = chunk.get("usage") or usage
                text.append(_delta_text(chunk))
                chunk |= {"id": outcome.request_id, "model": upstream.name}
                yield _sse(chunk)
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
            self._hold_against(upstream, failure, started)
            status = 504 if isinstance(failure, DeadlinePassed) else 502
            error_text = str(failure)
            yield _sse({"error": {"message": error_text, "type": "timeout" if status == 504 else "upstream_error"}})
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
            self._record(request, outcome, status, error=error_text or None, response=answer)
        if status == 200:
            yield _sse(
                {
                    "id": outcome.request_id,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": upstream.name,
                    "choices": [],
                    "usage": outcome.usage(),
                    "bestroute": outcome.details(self.selector.name),
                }
            )
            yield b"data: [DONE]\n\n"

    # ----------------------------------------------------------------- logging
    def _record(
        self,
        request: ChatCompletionRequest,
        outcome: Outcome,
        status: int,
        *,
        error: str | None = None,
        response: str | None = None,
    ) -> None:
        latency = time.perf_counter() - outcome.started
        prompt = request.prompt_text()
        model = outcome.attempt.upstream.name if outcome.attempt else None
        store = self.config.decision_log.store_prompts
        self.log.write(
            {
                "id": outcome.request_id,
                "created_at": time.time(),
                # surrogatepass: a prompt with a lone surrogate is still hashed (the row is sanitised later)
                "prompt_hash": hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
                "prompt": prompt if store else None,
                "requested_model": request.model,
                "model": model,
                "n": outcome.attempt.n if outcome.attempt else None,
                "threshold": outcome.plan.threshold,
                "scores": outcome.plan.scores,
                "fallbacks": outcome.fallbacks,
                "latency_ms": latency * 1000,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "call_input_tokens": outcome.call_input_tokens,
                "response_tokens": outcome.response_tokens,
                "cost_usd": outcome.cost_usd,
                "status": status,
                "error": error,
                "response": response if store else None,
                "client_key_id": outcome.client,
                "escalation": outcome.escalation,
            }
        )
        if status == 200:
            self.answered.add(outcome.request_id, outcome.client)
        if outcome.cost_usd:
            self.budgets.charge(outcome.client, outcome.cost_usd)
        self.metrics.observe(
            model=model or "none",
            n=outcome.attempt.n if outcome.attempt else 0,
            status=status,
            seconds=latency,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_usd=outcome.cost_usd,
        )


def _delta_text(chunk: dict[str, Any]) -> str:
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


def _sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


async def _replay(body: dict[str, Any]) -> AsyncIterator[bytes]:
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
    yield _sse(base | {"choices": [content]})
    yield _sse(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    yield _sse(base | {"choices": [], "usage": body["usage"], "bestroute": body["bestroute"]})
    yield b"data: [DONE]\n\n"
