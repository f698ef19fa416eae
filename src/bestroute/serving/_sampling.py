"""Running an attempt in the gateway: the executor (``selection.execute``) fed by the backends.
Each call a stage or an escalation makes asks its backend's circuit breaker first, is drawn with
the request's deadline (a stage's calls at once), and is held against its backend if it fails;
the completions are kept, so the answer can be sent as the upstream wrote it."""

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..backends import Completion, Deadline, Upstream, UpstreamError
from ..selection import AcceptanceModel, Call, Drawn, Execution, Judge, execute
from ._arms import Arms, finished, shaped
from ._judging import FirstSample, GatewayJudge, OnlineSelector
from ._metrics import GatewayMetrics
from ._planning import Attempt
from .protocol import ChatCompletionRequest


class CircuitOpen(UpstreamError):
    """A call was not made: its backend's circuit is open."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend, "circuit open", counts=False)


def hold_against(upstream: Upstream, error: UpstreamError, started: float, metrics: GatewayMetrics) -> None:
    """Only a failure that is the backend's fault counts against its health."""
    if error.counts:
        upstream.breaker.record_failure(started)
        metrics.upstream_failures.labels(backend=upstream.name).inc()


@dataclass(frozen=True)
class Run:
    """An attempt as it ran: the executor's record, the completions its samples came from (by
    (model, sample number): the completion and the choice's index in it), and the error of the
    call that failed, if one did."""

    attempt: Attempt
    execution: Execution
    completions: Mapping[tuple[str, int], tuple[Completion, int]]
    error: UpstreamError | None

    @property
    def answer(self) -> tuple[Completion, int]:
        """The completion and choice the kept sample is."""
        sample = self.execution.answer
        assert sample is not None, "a failed run has no answer"
        return self.completions[sample.model, sample.number]


class UpstreamSource:
    """A request's calls to its backends, as the executor's SampleSource.

    A call to a backend whose circuit is open is not made (a failed ``Drawn`` with no requests);
    a call that fails is recorded against its backend and returned as a failed ``Drawn`` (its
    error kept in ``errors`` by call); one that answers closes its backend's failure streak."""

    def __init__(self, request: ChatCompletionRequest, arms: Arms, deadline: Deadline, metrics: GatewayMetrics) -> None:
        self.request, self.arms, self.deadline, self.metrics = request, arms, deadline, metrics
        self.completions: dict[tuple[str, int], tuple[Completion, int]] = {}
        self.errors: dict[Call, UpstreamError] = {}

    async def draw(self, calls: Sequence[Call]) -> list[Drawn]:
        if len(calls) == 1:  # most requests: awaited directly, without a task to schedule
            return [await self._call(calls[0])]
        return list(await asyncio.gather(*(self._call(call) for call in calls)))

    async def _call(self, call: Call) -> Drawn:
        upstream, strategy = self.arms.get(call.model)
        if not upstream.breaker.allow():
            return self._failed(call, CircuitOpen(upstream.name), requests=0, latency_s=0.0)
        started = time.monotonic()
        body = shaped(
            self.request.upstream_body(upstream.config.upstream_model, n=call.samples, stream=False), strategy
        )
        try:
            completion = await upstream.complete(body, call.samples, self.deadline, first_sample=call.first)
        except UpstreamError as error:
            hold_against(upstream, error, started, self.metrics)
            return self._failed(call, error, requests=1, latency_s=time.monotonic() - started)
        upstream.breaker.record_success()
        completion = await finished(completion, strategy)
        kept = range(call.samples)  # an upstream may return more choices than asked: they are not drawn
        self.completions |= {(call.model, call.first + k): (completion, k) for k in kept}
        texts = completion.texts
        return Drawn(
            call,
            texts=tuple(texts[k] for k in kept),
            input_tokens=completion.prompt_tokens,
            output_tokens=tuple(completion.sample_tokens[k] for k in kept),
            cost_usd=upstream.cost(completion.prompt_tokens, completion.completion_tokens),
            latency_s=time.monotonic() - started,
            requests=completion.requests,
            tokens_estimated=completion.tokens_estimated,
        )

    def _failed(self, call: Call, error: UpstreamError, *, requests: int, latency_s: float) -> Drawn:
        self.errors[call] = error
        return Drawn(call, requests=requests, latency_s=latency_s, error=str(error))


class Sampler:
    """Runs attempts for one set of backends and one selector.

    Parameters
    ----------
    arms : Arms
        The backends and strategies an option's models name.
    selector : OnlineSelector
        Keeps one of a routed request's samples.
    reference : str
        The backend an escalating option asks when its samples do not convince it.
    metrics : GatewayMetrics
        Upstream failures are counted here.
    acceptance : AcceptanceModel or None
        The router's acceptance model, which decides its calibrated options' stages.
    """

    def __init__(
        self,
        *,
        arms: Arms,
        selector: OnlineSelector,
        reference: str,
        metrics: GatewayMetrics,
        acceptance: AcceptanceModel | None = None,
    ) -> None:
        self.arms, self.selector, self.reference, self.metrics = arms, selector, reference, metrics
        self.acceptance = acceptance

    async def run(self, request: ChatCompletionRequest, attempt: Attempt, *, routed: bool, deadline: Deadline) -> Run:
        """Run the attempt's option; a routed request's samples are judged by the selector, a
        direct one's are all returned."""
        source = UpstreamSource(request, self.arms, deadline, self.metrics)
        judge: Judge = GatewayJudge(self.selector, request.prompt_text, deadline) if routed else FirstSample()
        execution = await execute(
            attempt.option, source=source, judge=judge, reference=self.reference, acceptance=self.acceptance
        )
        failed = next((drawn.call for drawn in execution.calls if not drawn.ok), None)
        return Run(attempt, execution, source.completions, source.errors[failed] if failed is not None else None)
