"""Best-of-n selectors at serving time: majority vote, a reward-model endpoint, an LLM judge."""

import re
from typing import Protocol

import aiohttp
import numpy as np

from ..reward import RewardModel
from ..routers import make_selector, pick, pick_confidence
from ._config import SelectorConfig
from ._upstream import Upstream, UpstreamError


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
    """POST ``{"prompt", "responses"}`` to a reward-model endpoint that answers ``{"scores": [...]}``."""

    name = "reward"

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.url, self.session, self.timeout = url, session, aiohttp.ClientTimeout(total=timeout_s)

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        try:
            async with self.session.post(
                self.url, json={"prompt": prompt, "responses": responses}, timeout=self.timeout, raise_for_status=True
            ) as answer:
                scores = [float(s) for s in (await answer.json(content_type=None))["scores"]]
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("reward-model", f"no usable scores ({type(exc).__name__})") from exc
        if len(scores) != len(responses):
            raise UpstreamError("reward-model", f"{len(scores)} scores for {len(responses)} responses")
        return int(np.argmax(scores)), None


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
        message = _JUDGE_PROMPT.format(prompt=prompt, candidates=candidates)
        result = await self.judge.complete(
            {"messages": [{"role": "user", "content": message}], "temperature": 0, "max_tokens": 8}, 1
        )
        match = re.search(r"\d+", result.texts[0])
        if match and 1 <= int(match.group()) <= len(responses):
            return int(match.group()) - 1, None
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
        return RewardSelector(config.url or "", session, config.timeout_s)
    if config.kind == "judge":
        return JudgeSelector(upstreams[config.backend or ""])
    return AgreementSelector(config.kind)
