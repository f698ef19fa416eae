"""The two non-chat services best-of-n selection and collection call: a reward-model endpoint and
an LLM judge asked for one number, and the gateway's selectors that call them (each returns the
index of the response it keeps and no confidence)."""

import re

import aiohttp

from ._upstream import Upstream, UpstreamError


class RewardClient:
    """A reward-model endpoint: POST ``{"prompt", "responses"}`` -> ``{"scores": [...]}``, one score
    per response."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        self.url, self.session, self.timeout = url, session, aiohttp.ClientTimeout(total=timeout_s)

    async def scores(self, prompt: str, responses: list[str]) -> list[float]:
        try:
            async with self.session.post(
                self.url, json={"prompt": prompt, "responses": responses}, timeout=self.timeout, raise_for_status=True
            ) as answer:
                scores = [float(s) for s in (await answer.json(content_type=None))["scores"]]
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("reward-model", f"no usable scores ({type(exc).__name__})") from exc
        if len(scores) != len(responses):
            raise UpstreamError("reward-model", f"{len(scores)} scores for {len(responses)} responses")
        return scores


async def ask_judge(judge: Upstream, message: str, *, max_tokens: int) -> float | None:
    """The first number in a judge backend's reply to ``message`` (temperature 0), or None."""
    result = await judge.complete(
        {"messages": [{"role": "user", "content": message}], "temperature": 0, "max_tokens": max_tokens}, 1
    )
    found = re.search(r"\d+(\.\d+)?", result.texts[0])
    return float(found.group()) if found else None


class EndpointSelector:
    """The highest-scored response of a reward-model endpoint."""

    name = "reward"

    def __init__(self, client: RewardClient) -> None:
        self.client = client

    async def select(self, prompt: str, responses: list[str]) -> tuple[int, float | None]:
        scores = await self.client.scores(prompt, responses)
        return max(range(len(scores)), key=scores.__getitem__), None


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
