"""Best-of-n selectors at serving time: majority vote, a reward-model endpoint, an LLM judge."""

from typing import Protocol

import aiohttp
import numpy as np

from ..backends import RewardClient, Upstream, ask_judge
from ..reward import RewardModel
from ..routers import make_selector, pick, pick_confidence
from ._config import SelectorConfig


class ServingSelector(Protocol):
    name: str

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        """The index of the response kept, and the selector's confidence in it as offline
        escalation measures it (None for a selector that gives none)."""
        ...


class AgreementSelector:
    """Majority vote or consensus over final answers: the same rules as offline label estimation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rule = make_selector(name)

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        agreement, scores = self._rule.judge(prompt, list(responses), np.zeros(len(responses)))
        picked = pick(agreement, scores, np.arange(len(responses)))
        return picked, pick_confidence(self._rule, agreement, scores, picked)


class RewardModelSelector:
    """A trained proxy reward model (``bestroute train-reward``), scored in process."""

    name = "reward-model"

    def __init__(self, model: RewardModel) -> None:
        self.model = model

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        scores = self.model.score([prompt] * len(responses), responses)
        picked = int(np.argmax(scores))
        return picked, float(scores[picked])


class RewardSelector:
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


def make_serving_selector(
    config: SelectorConfig,
    session: aiohttp.ClientSession,
    upstreams: dict[str, Upstream],
    reward_model: RewardModel | None,
) -> ServingSelector:
    """``reward_model``: for kind ``reward-model``, the one ``config.path`` names, loaded before
    start-up (a missing or stale file is then a configuration error, not a failed start-up)."""
    if reward_model is not None:
        return RewardModelSelector(reward_model)
    if config.kind == "reward":
        return RewardSelector(RewardClient(config.url or "", session, config.timeout_s))
    if config.kind == "judge":
        return JudgeSelector(upstreams[config.backend or ""])
    return AgreementSelector(config.kind)
