"""The two non-chat services best-of-n selection and collection call: a reward-model endpoint and
an LLM judge asked for one number."""

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
