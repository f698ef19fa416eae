"""Best-of-n selection in the gateway: an in-process selector, a reward-model endpoint, or an LLM
judge keeps one of the responses sampled for a request."""

from typing import Protocol

import aiohttp
import numpy as np

from .._exceptions import RouterError
from ..backends import RewardClient, Upstream, ask_judge
from ._selectors import Selector, SelectorSpec, pick, pick_confidence


class OnlineSelector(Protocol):
    name: str

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        """The index of the response kept, and the selector's confidence in it as offline
        escalation measures it (None for a selector that gives none)."""
        ...


class InProcessSelector:
    """Majority vote, consensus or a trained reward model: the same judgment, pick and confidence
    as offline label estimation."""

    def __init__(self, selector: Selector) -> None:
        self.selector, self.name = selector, str(selector.spec.kind)

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        agreement, scores = self.selector.judge(prompt, list(responses), np.zeros(len(responses)))
        picked = pick(agreement, scores, np.arange(len(responses)))
        return picked, pick_confidence(self.selector, agreement, scores, picked)


class EndpointSelector:
    """The highest-scored response of a reward-model endpoint (:class:`bestroute.backends.RewardClient`)."""

    name = "reward"

    def __init__(self, client: RewardClient) -> None:
        self.client = client

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        return int(np.argmax(await self.client.scores(prompt, responses))), None


_JUDGE_PROMPT = """You are judging candidate answers to a request. Pick the single best answer:
correct, complete and following the request's instructions.

Request:
{prompt}

{candidates}

Reply with only the number of the best answer."""


class JudgeSelector:
    """Ask a configured backend which response is best; its reply must name a candidate number."""

    name = "judge"

    def __init__(self, judge: Upstream) -> None:
        self.judge = judge

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        candidates = "\n\n".join(f"Answer {i + 1}:\n{r}" for i, r in enumerate(responses))
        number = await ask_judge(self.judge, _JUDGE_PROMPT.format(prompt=prompt, candidates=candidates), max_tokens=8)
        if number is not None and number.is_integer() and 1 <= number <= len(responses):
            return int(number) - 1, None
        return 0, None  # an unusable verdict keeps the first sample rather than failing the request


def online_selector(
    spec: SelectorSpec,
    *,
    in_process: Selector | None,
    session: aiohttp.ClientSession,
    upstreams: dict[str, Upstream],
) -> OnlineSelector:
    """The gateway's selector for ``spec``: a service kind calls its endpoint or backend; an
    in-process kind runs ``in_process``, loaded before start-up (a missing or stale reward model
    is then a configuration error, not a failed start-up)."""
    if spec.kind == "reward":
        return EndpointSelector(RewardClient(spec.url or "", session, spec.timeout_s))
    if spec.kind == "judge":
        return JudgeSelector(upstreams[spec.backend or ""])
    if in_process is None:
        raise RouterError(f"selector {spec} runs in process: pass it loaded")
    return InProcessSelector(in_process)
