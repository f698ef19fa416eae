"""Chat completions: plan the options, try them in order until one answers (failing over on a
backend's failure, ending on a deadline or the client's own error), answer or stream, and record
one row. Planning, sampling, streaming and recording are their own modules."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..backends import Completion, Deadline, DeadlinePassed, Upstream, UpstreamError, UpstreamRejected
from ..routers import Router
from ..selection import OnlineSelector
from ._config import GatewayConfig
from ._errors import DeadlineExceeded, GatewayError, InvalidRequest, UpstreamFailed, UpstreamRejectedRequest
from ._loading import ArtifactInfo
from ._planning import Attempt, Plan, Planner
from ._recording import Outcome, Recorder
from ._sampling import Sampler
from ._streaming import relay, replay
from .protocol import ChatCompletionRequest

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the error code of OpenAI, vLLM and llama.cpp


class ChatService:
    """The logic behind POST /v1/chat/completions for one loaded configuration and router (a
    reload builds a new one)."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        router: Router,
        upstreams: dict[str, Upstream],
        selector: OnlineSelector,
        recorder: Recorder,
        artifact: ArtifactInfo,
    ) -> None:
        self.config, self.router, self.upstreams, self.artifact = config, router, upstreams, artifact
        self.selector, self.recorder, self.metrics = selector, recorder, recorder.metrics
        knob = config.threshold if config.threshold is not None else router.default_knob()
        self.planner = Planner(router=router, upstreams=upstreams, default_knob=knob, metrics=self.metrics)
        self.sampler = Sampler(
            upstreams=upstreams, selector=selector, reference=router.reference_.model, metrics=self.metrics
        )

    def plan(self, request: ChatCompletionRequest) -> Plan:
        return self.planner.plan(request)

    # ---------------------------------------------------------------- failover
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

    def _fail_over(self, request: ChatCompletionRequest, outcome: Outcome, error: UpstreamError) -> None:
        """After a failed attempt: raise the client's error if the failure ends the request (the
        deadline passed, or the backend rejected the request itself), else return to try the next
        option. A routed prompt over a backend's context window goes on to the next option, which
        may have a larger one (the rejection is kept in case none answers)."""
        if (
            isinstance(error, UpstreamRejected)
            and outcome.plan.routed
            and error.error["code"] == CONTEXT_LENGTH_EXCEEDED
        ):
            outcome.rejection = error
        elif isinstance(error, UpstreamRejected | DeadlinePassed):
            raise self._final(request, outcome, error) from None

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
        self.recorder.record(request, outcome, answer.status, error=str(error))
        return answer

    def _exhausted(self, request: ChatCompletionRequest, outcome: Outcome) -> GatewayError:
        if outcome.rejection is not None:
            return self._final(request, outcome, outcome.rejection)
        error = UpstreamFailed("no backend could answer: " + ("; ".join(outcome.fallbacks) or "none available"))
        self.recorder.record(request, outcome, error.status, error=error.message)
        return error

    # ------------------------------------------------------------- completing
    async def complete(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[dict[str, Any], Outcome]:
        outcome = self.recorder.open(plan, client, self.selector.name)
        try:
            for attempt in self._attempts(outcome):
                try:
                    completion = await self.sampler.answer(request, outcome, attempt, deadline)
                except UpstreamError as error:
                    self._fail_over(request, outcome, error)
                    continue
                return self._answer(request, outcome, completion), outcome
        except asyncio.CancelledError:
            self.recorder.record(request, outcome, 499, error="client disconnected")
            raise
        raise self._exhausted(request, outcome)

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
        self.recorder.record(request, outcome, 200, response=completion.texts[picked[0]])
        return completion.document | {
            "id": outcome.request_id,
            "object": "chat.completion",
            "created": completion.document.get("created") or int(time.time()),
            "model": outcome.attempt.upstream.name,
            "choices": choices,
            "usage": outcome.usage(),
            "bestroute": outcome.details(),
        }

    # -------------------------------------------------------------- streaming
    async def stream(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[Outcome, AsyncIterator[bytes]]:
        """Start a stream. One sample: the upstream's stream is relayed, failing over to the next
        option while no chunk has arrived. n samples: all are drawn, the selected one is streamed."""
        if not plan.routed and request.n > 1:
            raise InvalidRequest("streaming returns one choice; use n = 1 or stream = false", param="n")
        outcome = self.recorder.open(plan, client, self.selector.name)
        for attempt in self._attempts(outcome):
            try:
                if attempt.n > 1 or attempt.option is not None:  # drawn and selected, then streamed
                    completion = await self.sampler.answer(request, outcome, attempt, deadline)
                    return outcome, replay(self._answer(request, outcome, completion))
                body = request.upstream_body(attempt.upstream.config.upstream_model, n=1, stream=True)
                started = time.monotonic()
                try:
                    first, rest = await attempt.upstream.stream(body, deadline)
                except UpstreamError as error:
                    self.sampler.failed(outcome, attempt, error, started)
                    raise
            except UpstreamError as error:
                self._fail_over(request, outcome, error)
                continue
            attempt.upstream.breaker.record_success()
            outcome.attempt = attempt
            chunks = relay(
                request,
                outcome,
                first,
                rest,
                deadline=deadline,
                started=started,
                recorder=self.recorder,
                metrics=self.metrics,
            )
            return outcome, chunks
        raise self._exhausted(request, outcome)
