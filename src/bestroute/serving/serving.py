"""Chat completions: plan the options, run them in order until one answers (failing over on a
backend's failure, ending on a deadline or the client's own error), answer or stream, and record
the request once. Planning, running, streaming and recording are their own modules."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from typing import Any

from ..backends import Completion, Deadline, DeadlinePassed, Upstream, UpstreamError, UpstreamRejected
from ..data import arm_parts
from ..routers import Router
from ..selection import Option
from ._affinity import Conversations, next_turn_key
from ._arms import Arms, relays, shaped
from ._config import GatewayConfig
from ._errors import (
    ContentFlagged,
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    ScreenUnavailable,
    UpstreamFailed,
    UpstreamRejectedRequest,
)
from ._judging import OnlineSelector
from ._loading import ArtifactInfo
from ._planning import Attempt, Plan, Planner, is_routed
from ._recording import Recorder, Reference, RequestRecord, Ticket, answer_headers
from ._sampling import CircuitOpen, Run, Sampler, hold_against
from ._screen import Screen, Screened, Verdict
from ._shadow import ShadowChecks, ShadowTallies
from ._streaming import StreamedMessage, relay, replay, streamed_run
from .protocol import NO_CONSTRAINTS, ChatCompletionRequest, RequestConstraints

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the error code of OpenAI, vLLM and llama.cpp


class _Attempts:
    """One request's attempts so far: the runs (failed ones too), the notes, the models whose
    calls failed (a backend gets one, retried, chance per request) and a context-window rejection
    kept in case no later option answers."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.notes: list[str] = []
        self.failed: set[str] = set()
        self.rejection: UpstreamRejected | None = None

    def next_of(self, plan: Plan) -> list[Attempt]:
        """The plan's attempts not run yet whose models have not failed in this request."""
        ran = {run.attempt for run in self.runs}
        return [a for a in plan.attempts if a not in ran and not self.failed.intersection(a.option.stages[-1].models)]

    def add(self, run: Run) -> None:
        self.runs.append(run)
        self.notes += [f"{run.attempt.label}: {note}" for note in run.execution.notes]
        failed = [drawn for drawn in run.execution.calls if not drawn.ok]
        self.failed.update(drawn.call.model for drawn in failed)
        if failed:
            self.notes.append(f"{run.attempt.label}: {run.error or failed[0].error}")


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
        pool: Executor,
        tallies: ShadowTallies,
        conversations: Conversations,
    ) -> None:
        self.config, self.router, self.upstreams, self.artifact = config, router, upstreams, artifact
        self.conversations, self.screen = conversations, Screen(config.screen, upstreams)
        self.selector, self.recorder, self.metrics = selector, recorder, recorder.metrics
        reference = upstreams[arm_parts(router.reference_.model)[0]]  # the loader serves only a router it can call
        self.reference = Reference(router.reference_.model, reference.config.price)
        knob = config.threshold if config.threshold is not None else router.default_knob()
        self.arms = Arms(upstreams, {s.name: s for s in config.strategies})
        self.shadow = ShadowChecks(
            config.shadow,
            arms=self.arms,
            against=config.shadow.against or router.reference_.model,
            tallies=tallies,
            log=recorder.log,
            metrics=self.metrics,
            answer=config.selector.answer,
            store_prompts=config.decision_log.store_prompts,
        )
        self.planner = Planner(
            router=router,
            arms=self.arms,
            default_knob=knob,
            metrics=self.metrics,
            pool=pool,
            avoided=lambda: tallies.avoided(config.shadow),
            explore=config.explore,
            guard=config.guard,
        )
        self.sampler = Sampler(
            arms=self.arms,
            selector=selector,
            reference=router.reference_.model,
            metrics=self.metrics,
            acceptance=router.accept_model_,
        )

    async def plan(
        self,
        request: ChatCompletionRequest,
        deadline: Deadline,
        constraints: RequestConstraints = NO_CONSTRAINTS,
        *,
        headers: Mapping[str, str] | None = None,
        client: str | None = None,
    ) -> Plan:
        """The request's plan: screened first (a flagged request is refused, recorded, or planned
        to ``screen.redirect_to``), then, routed, placed in its conversation and routed."""
        screened = await self._screen(request, deadline, client) if self.screen.active else None
        if screened is not None and screened.action == "redirected":
            target = self.config.screen.redirect_to
            assert target is not None
            return Plan(attempts=(Attempt(Option(target), target),), routed=False, screen=screened)
        turn = None
        if is_routed(request.model):
            turn = await self.conversations.find(self.config.affinity, request, headers or {}, client)
        plan = await self.planner.plan(request, deadline, constraints, turn)
        return plan if screened is None else dataclasses.replace(plan, screen=screened)

    async def _screen(self, request: ChatCompletionRequest, deadline: Deadline, client: str | None) -> Screened | None:
        """The screen's verdict and what it does: None for a pass; redirected, or allowed (an
        error let through by ``on_error``); a refusal (400, or 503 when it could not judge) is
        recorded as the request's row and raised."""
        verdict = await self.screen.judge(request, deadline)
        redirect_to = self.config.screen.redirect_to
        # never sent where it cannot be served (asked only of a flagged request)
        fits = (
            verdict.flagged
            and redirect_to is not None
            and self.upstreams[redirect_to].config.refusal(request.needs) is None
        )
        screened, refusal = self._act(verdict, redirect_fits=fits)
        if refusal is not None:
            plan = Plan(attempts=(), routed=False, screen=screened)
            self._close(request, self.recorder.open(client), plan, _Attempts(), refusal.status, error=refusal.message)
            raise refusal
        return screened

    async def screen_prompts(self, prompts: list[str], deadline: Deadline) -> Screened | None:
        """The screen on a completion request's prompts (passed through, no decision-log row):
        None for a pass; redirected or allowed; a refusal is raised."""
        screened, refusal = self._act(await self.screen.judge_prompts(prompts, deadline), redirect_fits=True)
        if refusal is not None:
            raise refusal
        return screened

    def _act(self, verdict: Verdict, *, redirect_fits: bool) -> tuple[Screened | None, GatewayError | None]:
        """What ``screen`` makes of ``verdict``, counted: the Screened (None for a pass) and, for
        a refusal, the client's error (a 400, or a 503 when the screen could not judge)."""
        screen = self.config.screen
        if verdict.error is not None:
            action = "allowed" if screen.on_error == "allow" else "refused"
        elif not verdict.flagged:
            action = "passed"
        elif screen.on_flag == "redirect":
            action = "redirected" if redirect_fits else "refused"
        else:
            action = "refused"
        kind = "error" if verdict.error is not None else "flagged" if verdict.flagged else "passed"
        self.metrics.screened.labels(verdict=kind, action=action).inc()
        if action == "passed":
            return None, None
        screened = Screened(verdict, action)
        if action != "refused":
            return screened, None
        if verdict.error is not None:
            message = f"the safety screen could not judge this request ({verdict.error})"
            return screened, ScreenUnavailable(message, code="screen_unavailable")
        message = "this request was refused by the gateway's safety screen"
        return screened, ContentFlagged(message, code="content_policy_violation")

    # ---------------------------------------------------------------- failover
    async def _run_in_order(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, tried: _Attempts, ticket: Ticket
    ) -> Run | None:
        """Run the plan's attempts in order until one answers (returned), failing over past a
        backend's failure; None when none is left. A failure that ends the request (the deadline,
        the backend rejecting the request itself) raises the client's error, recorded."""
        while attempts := tried.next_of(plan):
            run = await self._try(request, plan, attempts[0], deadline, tried, ticket)
            if run is not None:
                return run
        return None

    async def _try(
        self,
        request: ChatCompletionRequest,
        plan: Plan,
        attempt: Attempt,
        deadline: Deadline,
        tried: _Attempts,
        ticket: Ticket,
    ) -> Run | None:
        """Run one attempt: its run if it answered, else None after failing over."""
        run = await self.sampler.run(request, attempt, routed=plan.routed, deadline=deadline)
        tried.add(run)
        if run.execution.answer is not None:
            return run
        self._fail_over(request, plan, run.error, tried, ticket)
        return None

    def _fail_over(
        self, request: ChatCompletionRequest, plan: Plan, error: UpstreamError | None, tried: _Attempts, ticket: Ticket
    ) -> None:
        """After a failed attempt: raise the client's error if the failure ends the request (the
        deadline passed, or the backend rejected the request itself), else return to try the next
        option. A routed prompt over a backend's context window goes on to the next option, which
        may have a larger one (the rejection is kept in case none answers)."""
        if isinstance(error, UpstreamRejected) and plan.routed and error.error["code"] == CONTEXT_LENGTH_EXCEEDED:
            tried.rejection = error
        elif isinstance(error, UpstreamRejected | DeadlinePassed):
            raise self._final(request, plan, error, tried, ticket) from None

    def _final(
        self, request: ChatCompletionRequest, plan: Plan, error: UpstreamError, tried: _Attempts, ticket: Ticket
    ) -> GatewayError:
        """The client's error when an attempt's failure ends the request."""
        answer: GatewayError
        if isinstance(error, UpstreamRejected):
            answer = UpstreamRejectedRequest.of(error)
        else:
            answer = DeadlineExceeded("the request's deadline passed; tried: " + "; ".join(tried.notes))
        self._close(request, ticket, plan, tried, answer.status, error=str(error))
        return answer

    def _exhausted(self, request: ChatCompletionRequest, plan: Plan, tried: _Attempts, ticket: Ticket) -> GatewayError:
        if tried.rejection is not None:
            return self._final(request, plan, tried.rejection, tried, ticket)
        error = UpstreamFailed("no backend could answer: " + ("; ".join(tried.notes) or "none available"))
        self._close(request, ticket, plan, tried, error.status, error=error.message)
        return error

    def _close(
        self,
        request: ChatCompletionRequest,
        ticket: Ticket,
        plan: Plan,
        tried: _Attempts,
        status: int,
        *,
        error: str | None = None,
        response: str | None = None,
        answer: Mapping[str, Any] | None = None,
    ) -> RequestRecord:
        """Account the request once it ends, remember an answered turn's conversation, and start
        its shadow check if it gets one. ``answer``: the message the client got (a stream's, assembled)."""
        turn_key = None
        if plan.turn is not None and status == 200 and answer is not None:
            turn_key = next_turn_key(plan.turn.history, answer)
        record = self.recorder.close(
            request,
            ticket,
            plan,
            tried.runs,
            [*plan.notes(), *tried.notes],
            status,
            selector=self.selector.name,
            reference=self.reference,
            error=error,
            response=response,
            turn_key=turn_key,
        )
        if turn_key is not None and plan.turn is not None and record.model is not None:
            conversation = plan.turn.conversation or ticket.request_id
            self.conversations.remember(self.config.affinity, conversation, record.model, turn_key)
        self.shadow.start(request, record)  # a task of its own: neither the response nor its connection waits
        return record

    # ------------------------------------------------------------- completing
    async def complete(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[dict[str, Any], RequestRecord]:
        ticket, tried = self.recorder.open(client), _Attempts()
        try:
            run = await self._run_in_order(request, plan, deadline, tried, ticket)
        except asyncio.CancelledError:
            self._close(request, ticket, plan, tried, 499, error="client disconnected")
            raise
        if run is None:
            raise self._exhausted(request, plan, tried, ticket)
        return self._answer(request, ticket, plan, tried, run)

    def _answer(
        self, request: ChatCompletionRequest, ticket: Ticket, plan: Plan, tried: _Attempts, run: Run
    ) -> tuple[dict[str, Any], RequestRecord]:
        """The chat.completion body: the upstream's, with routed requests getting the kept
        choice and direct ones all, each as the upstream sent it (tool calls, refusal, logprobs);
        only ``id``, ``model``, ``usage``, the choices' ``index`` and ``bestroute`` are the gateway's."""
        completion, kept = run.answer
        picked = range(len(completion.choices)) if not plan.routed else [kept]
        choices = [_choice(completion, k, index) for index, k in enumerate(picked)]
        message = completion.choices[kept].get("message")
        record = self._close(
            request,
            ticket,
            plan,
            tried,
            200,
            response=completion.texts[kept],
            answer=message if isinstance(message, dict) else {"role": "assistant", "content": completion.texts[kept]},
        )
        body = completion.document | {
            "id": ticket.request_id,
            "object": "chat.completion",
            "created": completion.document.get("created") or int(time.time()),
            "model": record.model,
            "choices": choices,
            "usage": record.usage(),
            "bestroute": record.details(),
        }
        return body, record

    # -------------------------------------------------------------- streaming
    async def stream(
        self, request: ChatCompletionRequest, plan: Plan, deadline: Deadline, client: str | None
    ) -> tuple[dict[str, str], AsyncIterator[bytes]]:
        """Start a stream: its headers and chunks. One sample of one model: the upstream's stream
        is relayed, failing over to the next option while no chunk has arrived. Anything else is
        run as a whole, then its answer is streamed."""
        if not plan.routed and request.n > 1:
            raise InvalidRequest("streaming returns one choice; use n = 1 or stream = false", param="n")
        ticket, tried = self.recorder.open(client), _Attempts()
        while attempts := tried.next_of(plan):
            attempt = attempts[0]
            upstream, strategy = self.arms.get(attempt.option.stages[-1].models[0])
            if not attempt.option.single or not relays(strategy):  # drawn and judged, then streamed
                run = await self._try(request, plan, attempt, deadline, tried, ticket)
                if run is None:
                    continue
                body, record = self._answer(request, ticket, plan, tried, run)
                return record.headers(), replay(body)
            started = time.monotonic()
            try:
                if not upstream.breaker.allow():
                    raise CircuitOpen(upstream.name)
                body = shaped(request.upstream_body(upstream.config.upstream_model, n=1, stream=True), strategy)
                first, rest = await upstream.stream(body, deadline)
            except UpstreamError as error:
                hold_against(upstream, error, started, self.metrics)
                tried.add(streamed_run(attempt, error=error, latency_s=time.monotonic() - started))
                self._fail_over(request, plan, error, tried, ticket)
                continue
            upstream.breaker.record_success()
            chunks = relay(
                request,
                attempt,
                upstream,
                first,
                rest,
                deadline=deadline,
                started=started,
                metrics=self.metrics,
                finish=lambda run, status, error, streamed: self._close_stream(
                    request, ticket, plan, tried, run, status, error, streamed
                ),
                request_id=ticket.request_id,
            )
            return answer_headers(ticket, plan, attempt.option.model, 1), chunks
        raise self._exhausted(request, plan, tried, ticket)

    def _close_stream(
        self,
        request: ChatCompletionRequest,
        ticket: Ticket,
        plan: Plan,
        tried: _Attempts,
        run: Run,
        status: int,
        error: str | None,
        streamed: StreamedMessage,
    ) -> RequestRecord:
        tried.add(run)
        return self._close(
            request, ticket, plan, tried, status, error=error, response=streamed.text, answer=streamed.message()
        )


def _choice(completion: Completion, k: int, index: int) -> dict[str, Any]:
    choice = completion.choices[k]
    return choice | {"index": index, "finish_reason": choice.get("finish_reason") or "stop"}
