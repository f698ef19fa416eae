"""Scorers: the quality in [0, 1] of one response to one prompt."""

import ast
import json
import re
from typing import Any, Protocol

import aiohttp

from .._exceptions import ConfigError
from ..routers import extract_answer
from ..serving._upstream import Upstream, UpstreamError

CHECKS = ("numeric", "exact", "literal", "regex", "contains", "yesno")


class Scorer(Protocol):
    name: str

    async def score(self, prompt: dict[str, Any], response: str) -> float: ...


def check_reference(response: str, reference: str, check: str) -> bool:
    """Whether ``response`` answers ``reference`` under ``check``:
    numeric (the answer's number equals it), exact (normalised final answer equals it),
    literal (equal Python literals), regex (the pattern occurs, case-insensitive), contains (the
    reference occurs as a whole word), yesno (the first yes/no word is the reference)."""
    text = response.strip()
    if check == "numeric":
        numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
        try:
            return bool(numbers) and float(numbers[0].replace(",", "")) == float(reference.replace(",", ""))
        except ValueError:
            return False
    if check == "exact":
        return extract_answer(text) == extract_answer(reference)
    if check == "literal":
        expected = _literal(reference)
        return expected is not _NOT_A_LITERAL and any(_literal(c) == expected for c in _literal_candidates(text))
    if check == "regex":
        return re.search(reference, text, flags=re.IGNORECASE) is not None
    if check == "contains":
        return re.search(rf"\b{re.escape(reference)}\b", text, flags=re.IGNORECASE) is not None
    if check == "yesno":
        first = re.search(r"\b(yes|no)\b", text, flags=re.IGNORECASE)
        return first is not None and first.group(1).lower() == reference.strip().lower()
    raise ConfigError(f"unknown check {check!r}; choose one of {', '.join(CHECKS)}")


_NOT_A_LITERAL = object()


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_A_LITERAL


def _literal_candidates(text: str) -> list[str]:
    """Where a Python literal answer may stand: the whole text, a JSON "answer" field, the last line."""
    candidates = [text]
    for blob in re.findall(r"\{.*\}", text, flags=re.DOTALL):
        try:
            parsed = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and "answer" in parsed:
            candidates.append(str(parsed["answer"]))
    candidates.append(text.strip().splitlines()[-1] if text.strip() else "")
    return candidates


class ReferenceScorer:
    """1 if the response matches the prompt's reference answer under its check, else 0."""

    name = "reference"

    def __init__(self, default_check: str = "exact") -> None:
        self.default_check = default_check

    async def score(self, prompt: dict[str, Any], response: str) -> float:
        return float(check_reference(response, prompt["reference"], prompt.get("check") or self.default_check))


class RewardScorer:
    """A reward-model endpoint: POST {prompt, responses: [response]} -> {scores: [s]}, s in [0, 1]."""

    name = "reward"

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        self.url, self.session, self.timeout = url, session, aiohttp.ClientTimeout(total=timeout_s)

    async def score(self, prompt: dict[str, Any], response: str) -> float:
        try:
            async with self.session.post(self.url, json={"prompt": prompt["prompt"], "responses": [response]},
                                         timeout=self.timeout, raise_for_status=True) as answer:
                value = float((await answer.json(content_type=None))["scores"][0])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UpstreamError("reward-model", f"no usable score ({type(exc).__name__})") from exc
        return min(1.0, max(0.0, value))


_JUDGE = """Rate how well the answer below responds to the request, from 0 (useless or wrong) to
10 (fully correct and helpful).{reference}

Request:
{prompt}

Answer:
{response}

Reply with only the number."""


class JudgeScorer:
    """An LLM judge through a configured backend; its 0-10 rating becomes a quality in [0, 1]."""

    name = "judge"

    def __init__(self, judge: Upstream) -> None:
        self.judge = judge

    async def score(self, prompt: dict[str, Any], response: str) -> float:
        reference = f"\nA correct answer is: {prompt['reference']}" if prompt.get("reference") else ""
        message = _JUDGE.format(reference=reference, prompt=prompt["prompt"], response=response)
        result = await self.judge.complete({"messages": [{"role": "user", "content": message}],
                                            "temperature": 0, "max_tokens": 4}, 1)
        found = re.search(r"\d+(\.\d+)?", result.texts[0])
        if found is None:
            raise UpstreamError(self.judge.name, "the judge gave no rating")
        return min(10.0, float(found.group())) / 10.0
