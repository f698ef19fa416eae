"""Drawing an attempt's answer: its samples from the backends, paid for, and the one kept — best
of n by the selector, or stage by stage for a mixture or staged option, as offline evaluation
simulates it."""

import asyncio
import time
from typing import Any

from ..backends import Completion, Deadline, Upstream, UpstreamError, estimate_tokens
from ..selection import OnlineSelector, stage_draws, stage_samples, stage_verdict
from ._metrics import GatewayMetrics
from ._planning import Attempt
from ._recording import Outcome
from .protocol import ChatCompletionRequest


def hold_against(upstream: Upstream, error: UpstreamError, started: float, metrics: GatewayMetrics) -> None:
    """Only a failure that is the backend's fault counts against its health."""
    if error.counts:
        upstream.breaker.record_failure(started)
        metrics.upstream_failures.labels(backend=upstream.name).inc()


class Sampler:
    """Draws attempts for one set of backends and one selector.

    Parameters
    ----------
    upstreams : dict
        The backends by name.
    selector : OnlineSelector
        Keeps one of a routed request's samples.
    reference : str
        The backend an escalating option asks when its samples do not convince it.
    metrics : GatewayMetrics
        Upstream failures and escalations are counted here.
    """

    def __init__(
        self, *, upstreams: dict[str, Upstream], selector: OnlineSelector, reference: str, metrics: GatewayMetrics
    ) -> None:
        self.upstreams, self.selector, self.reference, self.metrics = upstreams, selector, reference, metrics

    def failed(self, outcome: Outcome, attempt: Attempt, error: UpstreamError, started: float) -> None:
        hold_against(attempt.upstream, error, started, self.metrics)
        outcome.fallbacks.append(f"{attempt.label}: {error}")

    async def answer(
        self, request: ChatCompletionRequest, outcome: Outcome, attempt: Attempt, deadline: Deadline
    ) -> Completion:
        """Draw the attempt's samples and select one; an UpstreamError is recorded and re-raised."""
        if attempt.option is not None:
            return await self._staged(request, outcome, attempt, deadline)
        started = time.monotonic()
        try:
            completion = await self.draw(request, attempt.upstream, attempt.n, deadline)
        except UpstreamError as error:
            self.failed(outcome, attempt, error, started)
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

    async def draw(self, request: ChatCompletionRequest, upstream: Upstream, n: int, deadline: Deadline) -> Completion:
        body = request.upstream_body(upstream.config.upstream_model, n=n, stream=False)
        return await upstream.complete(body, n, deadline)

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

    async def _staged(
        self, request: ChatCompletionRequest, outcome: Outcome, attempt: Attempt, deadline: Deadline
    ) -> Completion:
        """A mixture or escalating option: stage by stage, the samples a stage adds are drawn from
        each of its models at once, the selector picks among all drawn so far (in
        ``stage_samples`` order) and ``stage_verdict`` keeps the pick, goes on to the next stage
        or asks the reference; every stage is paid for. If a later stage or the reference fails,
        the last pick is kept (and the row says so)."""
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
            stages.append(_stage_row(stage.label, list(stage.models), stage.n, confidence, outcome.cost_usd - before))
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
            reference = self.upstreams[self.reference]
            escalated = time.monotonic()
            try:
                answer = await self.draw(request, reference, 1, deadline)
            except UpstreamError as error:
                hold_against(reference, error, escalated, self.metrics)
                outcome.fallbacks.append(f"escalation to {reference.name}: {error}; kept the pick")
            else:
                reference.breaker.record_success()
                before = outcome.cost_usd
                outcome.charge(reference, answer.prompt_tokens, answer.completion_tokens)
                stages.append(_stage_row("reference", [reference.name], 1, None, outcome.cost_usd - before))
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
            *(self.draw(request, u, count, deadline) for u, (_, _, count) in zip(upstreams, calls, strict=True)),
            return_exceptions=True,
        )
        failures = [(u, r) for u, r in zip(upstreams, results, strict=True) if isinstance(r, BaseException)]
        for upstream, failure in failures:
            if not isinstance(failure, UpstreamError):
                raise failure
            hold_against(upstream, failure, started, self.metrics)
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


def _stage_row(option: str, models: list[str], n: int, confidence: float | None, cost_usd: float) -> dict[str, Any]:
    """One stage as the response body and the decision log list it."""
    return {"option": option, "models": models, "n": n, "confidence": confidence, "cost_usd": cost_usd}
