"""Best-of-n selection in the gateway: the configured selector behind the executor's Judge, with
the request's deadline; an in-process selector (majority, consensus, a reward model) judges in the
worker pool, never on the event loop."""

import asyncio
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

import aiohttp
import numpy as np

from .._exceptions import RouterError
from ..backends import Deadline, EndpointSelector, JudgeSelector, RewardClient, Upstream, UpstreamError
from ..selection import Judgment, Sample, Selector, SelectorSpec, judgment
from ._cpu import run_cpu


class OnlineSelector(Protocol):
    name: str

    async def judge(self, prompt: str, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        """The sample kept and the selector's confidence in it as offline escalation measures
        it (None for a selector that gives none), with the stage's signals if asked and known."""
        ...


class _Service(Protocol):
    """A selector service of the backends layer (a reward endpoint, an LLM judge)."""

    name: str

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]: ...


class ServiceSelector:
    """A selector service as an OnlineSelector: its pick and confidence; it gives no signals."""

    def __init__(self, service: _Service) -> None:
        self.service, self.name = service, service.name

    async def judge(self, prompt: str, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        picked, confidence = await self.service.select(prompt, [sample.text or "" for sample in samples])
        return Judgment(picked, confidence)


class InProcessSelector:
    """Majority vote, consensus or a trained reward model: the same judgment, pick and confidence
    as offline (``selection.judgment``), computed in ``pool`` (``run_cpu``) so long answers or a
    reward model's scoring never hold up other requests."""

    def __init__(self, selector: Selector, pool: Executor) -> None:
        self.selector, self.pool, self.name = selector, pool, str(selector.spec.kind)
        # A model's scoring costs more than its input's length says: always in the pool.
        self._always_pooled = selector.confidence == "score"

    async def judge(self, prompt: str, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        """The Judgment of ``samples``, with the stage's signals if asked (a calibrated stage)."""
        size = math.inf if self._always_pooled else sum(len(s.text or "") for s in samples)
        return await run_cpu(self.pool, size, lambda: self._judge(prompt, samples, signals))

    def _judge(self, prompt: str, samples: Sequence[Sample], signals: bool) -> Judgment:
        responses: list[str | None] = [s.text or "" for s in samples]
        agreement, scores = self.selector.judge(prompt, responses, np.zeros(len(responses)))
        return judgment(self.selector, agreement, scores, samples=samples if signals else None, prompt=prompt)


def online_selector(
    spec: SelectorSpec,
    *,
    in_process: Selector | None,
    pool: Executor,
    session: aiohttp.ClientSession,
    upstreams: dict[str, Upstream],
) -> OnlineSelector:
    """The gateway's selector for ``spec``: a service kind calls its endpoint or backend; an
    in-process kind runs ``in_process``, loaded before start-up (a missing or stale reward model
    is then a configuration error, not a failed start-up)."""
    if spec.kind == "reward":
        return ServiceSelector(EndpointSelector(RewardClient(spec.url or "", session, spec.timeout_s)))
    if spec.kind == "judge":
        return ServiceSelector(JudgeSelector(upstreams[spec.backend or ""]))
    if in_process is None:
        raise RouterError(f"selector {spec} runs in process: pass it loaded")
    return InProcessSelector(in_process, pool)


class GatewayJudge:
    """The executor's Judge for one request: the selector's pick and confidence within the
    request's deadline; if the selector fails or runs out of time, the first sample and no
    confidence (so an escalating stage asks the reference), with a note saying why."""

    def __init__(self, selector: OnlineSelector, prompt: str, deadline: Deadline) -> None:
        self.selector, self.prompt, self.deadline = selector, prompt, deadline

    async def judge(self, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        try:
            async with asyncio.timeout(max(self.deadline.remaining(), 0.0)):
                return await self.selector.judge(self.prompt, samples, signals=signals)
        except UpstreamError as error:
            return Judgment(0, None, f"selector: {error}; kept the first sample")
        except TimeoutError:
            return Judgment(0, None, "selector: the request's deadline passed; kept the first sample")


class FirstSample:
    """The Judge of a request that names a backend: no selection, all samples are returned."""

    async def judge(self, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        return Judgment(0, None)
