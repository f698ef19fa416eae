"""The safety screen before routing: a request's user and tool messages are judged by patterns,
a moderation endpoint or a guard model, and a flagged request is refused or sent to a designated
backend (``screen`` in the configuration)."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backends import Deadline, Upstream, UpstreamError
from ._config import ScreenConfig
from .protocol import ChatCompletionRequest

# Common jailbreak and prompt-injection phrasings (the patterns kind's built-in list): a cheap
# first line, not a classifier; a moderation endpoint or a guard model reads meaning.
BUILTIN_PATTERNS = (
    (
        r"\b(ignore|disregard|forget)\s+(all\s+|any\s+)?(of\s+)?(the\s+|your\s+)?(previous|prior|above|earlier)\s+"
        r"(instructions|prompts|rules|directions)"
    ),
    r"\byou\s+are\s+(now\s+)?(DAN|in\s+developer\s+mode)\b",
    r"\bdo\s+anything\s+now\b",
    r"\bjailbr(eak|oken)\b",
    r"\b(pretend|act\s+as\s+if)\s+(that\s+)?you\s+(have|had|are\s+under)\s+no\s+(restrictions|rules|guidelines|filters)",
    (
        r"\b(reveal|print|show|repeat|output)\s+(me\s+)?(your|the)\s+(system|hidden|initial|original)\s+"
        r"(prompt|instructions|message)"
    ),
    r"\bwithout\s+(any\s+)?(ethical|moral|safety|content)\s+(restrictions|guidelines|filters|limits)",
)
# what the client's users and tools wrote; the system prompt is the developer's
SCREENED_ROLES = frozenset({"user", "tool"})


@dataclass(frozen=True)
class Verdict:
    """The screen's judgment: ``flagged`` and why (the pattern, the categories, the guard's
    answer), or the ``error`` that kept it from judging."""

    flagged: bool
    reason: str = ""
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"not judged: {self.error}"
        return f"flagged: {self.reason}" if self.flagged else "passed"


@dataclass(frozen=True)
class Screened:
    """What the screen did to a request it flagged or could not judge: ``action`` refused,
    redirected or allowed (an error let through)."""

    verdict: Verdict
    action: str

    def note(self) -> str:
        return f"{self.verdict.describe()} ({self.action})"


class Screen:
    """The configured screen (``kind`` None: every request passes unjudged).

    Parameters
    ----------
    config : ScreenConfig
        What judges and what a verdict does.
    upstreams : dict
        The backends by name (a moderation endpoint or a guard model is one of them).
    """

    def __init__(self, config: ScreenConfig, upstreams: dict[str, Upstream]) -> None:
        self.config = config
        self._patterns = [
            re.compile(p, re.IGNORECASE)
            for p in [
                *config.patterns,
                *(BUILTIN_PATTERNS if config.kind == "patterns" and config.builtin_patterns else ()),
            ]
        ]
        self._unsafe = re.compile(config.unsafe, re.IGNORECASE | re.MULTILINE)
        self._backend = upstreams[config.backend] if config.backend is not None else None

    @property
    def active(self) -> bool:
        return self.config.kind is not None

    async def judge(self, request: ChatCompletionRequest, deadline: Deadline) -> Verdict:
        """The verdict on a chat request's user and tool messages (a guard model reads the
        conversation with its assistant turns), within ``timeout_s`` and the request's deadline."""
        texts = [m.text() for m in request.messages if m.role in SCREENED_ROLES]
        return await self._judge(
            texts,
            lambda: [
                {"role": m.role if m.role != "tool" else "user", "content": m.text()}
                for m in request.messages
                if m.role in SCREENED_ROLES or m.role == "assistant"
            ],
            deadline,
        )

    async def judge_prompts(self, prompts: list[str], deadline: Deadline) -> Verdict:
        """The verdict on a completion request's prompts (a guard model reads them as one user turn)."""
        return await self._judge(prompts, lambda: [{"role": "user", "content": "\n\n".join(prompts)}], deadline)

    async def _judge(
        self, texts: list[str], conversation: Callable[[], list[dict[str, str]]], deadline: Deadline
    ) -> Verdict:
        """``texts`` judged by the patterns and the endpoint; ``conversation()`` (made only for a
        guard model) is what a guard model reads."""
        matched = self._matched(texts)  # the configured patterns first, whatever the kind: they cost nothing
        if matched.flagged or self.config.kind == "patterns" or not texts:
            return matched
        assert self._backend is not None  # the configuration requires one for the other kinds
        within = Deadline.after(max(min(self.config.timeout_s, deadline.remaining()), 0.0))
        try:
            if self.config.kind == "moderation":
                relayed = await self._backend.relay("/moderations", {"input": texts}, within)
                return self._moderated(relayed.document)
            return await self._guarded(conversation(), within)
        except UpstreamError as error:
            return Verdict(False, error=f"{self._backend.name}: {error.reason}")

    def _matched(self, texts: list[str]) -> Verdict:
        for pattern in self._patterns:
            for text in texts:
                if pattern.search(text):
                    return Verdict(True, f"pattern {pattern.pattern[:80]!r}")
        return Verdict(False)

    def _moderated(self, document: dict[str, Any]) -> Verdict:
        """OpenAI's moderation answer: ``results``, one per input, each ``flagged`` with its
        ``categories`` (name -> bool)."""
        results = document.get("results")
        if not isinstance(results, list) or not results or not all(isinstance(r, dict) for r in results):
            return Verdict(False, error="the moderation answer has no results")
        hits = sorted(
            {
                name
                for r in results
                if isinstance(r.get("categories"), dict)
                for name, on in r["categories"].items()
                if on
            }
        )
        if self.config.categories is not None:
            counted = [c for c in hits if c in self.config.categories]
            return Verdict(bool(counted), "moderation: " + ", ".join(counted))
        flagged = any(r.get("flagged") is True for r in results)
        return Verdict(flagged, "moderation: " + (", ".join(hits) or "flagged"))

    async def _guarded(self, conversation: list[dict[str, str]], within: Deadline) -> Verdict:
        """A guard model's answer to the conversation (its chat template frames the question,
        as Llama Guard's does): flagged when it matches ``unsafe``."""
        assert self._backend is not None
        body = {"messages": conversation, "max_tokens": 20, "temperature": 0.0}
        completion = await self._backend.complete(body, 1, within)
        answer = completion.texts[0].strip()
        if self._unsafe.search(answer):
            return Verdict(True, "guard model: " + " ".join(answer.split())[:120])
        return Verdict(False)
