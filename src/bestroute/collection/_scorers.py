"""Scorers: the quality in [0, 1] of one response to one prompt."""

import ast
import asyncio
import re
import threading
from typing import Any, Protocol

import numpy as np

from .._exceptions import ConfigError
from .._text import json_object
from ..backends import RewardClient, Upstream, UpstreamError, ask_judge
from ..selection import equivalent, read_answer

CHECKS = ("numeric", "exact", "literal", "regex", "contains", "yesno")
SCORERS = ("reference", "reward", "judge", "likelihood")


class Scorer(Protocol):
    name: str

    async def score(self, prompt: dict[str, Any], response: str) -> float: ...


def check_reference(response: str, reference: str, check: str) -> bool:
    """Whether ``response`` answers ``reference`` under ``check``:
    numeric (the first number written equals it: a hedge such as "13 or maybe 12" is wrong),
    exact (the final answer is equivalent to it, read by type: ``bestroute.selection.read_answer``),
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
        return equivalent(read_answer(text), read_answer(reference))
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
    parsed = json_object(text)
    if parsed is not None and "answer" in parsed:
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
    """A reward-model endpoint (:class:`bestroute.backends.RewardClient`); its score of the one
    response, clipped to [0, 1]."""

    name = "reward"

    def __init__(self, client: RewardClient) -> None:
        self.client = client

    async def score(self, prompt: dict[str, Any], response: str) -> float:
        return min(1.0, max(0.0, (await self.client.scores(prompt["prompt"], [response]))[0]))


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
        rating = await ask_judge(self.judge, message, max_tokens=4)
        if rating is None:
            raise UpstreamError(self.judge.name, "the judge gave no rating")
        return min(10.0, rating) / 10.0


class LikelihoodScorer:
    """A local model's mean log-likelihood of the response given the prompt, reported as the
    geometric-mean token probability exp(mean log p), in (0, 1]. The prompt goes through the
    model's chat template as a user turn; llama.cpp runs in-process (the ``local`` extra).

    Parameters
    ----------
    model : str
        A packaged local model (``bestroute local list``) or a .gguf path.
    threads : int
        CPU threads for llama.cpp.
    context : int
        Longest prompt plus response in tokens; longer pairs are an error.
    """

    name = "likelihood"

    def __init__(self, model: str, *, threads: int = 2, context: int = 2048) -> None:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ConfigError("the likelihood scorer needs the local extra (see scripts/install.sh)") from exc
        from ..backends import model_path

        self.context = context
        # logits_all: llama.cpp keeps every position's logits, not only the last one's.
        self._llm = Llama(
            model_path=str(model_path(model)), n_ctx=context, n_threads=threads, logits_all=True, verbose=False
        )
        template = self._llm.metadata.get("tokenizer.chat_template")
        special = {
            name: self._llm.detokenize([token], special=True).decode(errors="replace")
            for name, token in (("eos", self._llm.token_eos()), ("bos", self._llm.token_bos()))
        }
        self._template = (
            Jinja2ChatFormatter(template, eos_token=special["eos"], bos_token=special["bos"]) if template else None
        )
        self._lock = threading.Lock()  # one llama.cpp context, scored one pair at a time

    async def score(self, prompt: dict[str, Any], response: str) -> float:
        return await asyncio.to_thread(self.likelihood, prompt["prompt"], response)

    def likelihood(self, prompt: str, response: str) -> float:
        context = (
            self._template(messages=[{"role": "user", "content": prompt}]).prompt if self._template else prompt + "\n"
        )
        with self._lock:
            prefix = self._llm.tokenize(context.encode(), add_bos=self._template is None, special=True)
            tokens = self._llm.tokenize(response.encode(), add_bos=False, special=False)
            if not tokens:
                return 0.0
            if len(prefix) + len(tokens) > self.context:
                raise ConfigError(
                    f"prompt and response take {len(prefix) + len(tokens)} tokens; the likelihood "
                    f"scorer's context is {self.context}"
                )
            self._llm.reset()  # type: ignore[no-untyped-call]
            self._llm.eval(prefix + tokens)
            # Row i holds the logits that predict token i + 1.
            logits = np.asarray(self._llm.scores[len(prefix) - 1 : len(prefix) + len(tokens) - 1], dtype=np.float64)
        top = logits.max(axis=1)
        log_normaliser = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        log_probs = logits[np.arange(len(tokens)), tokens] - log_normaliser
        return float(np.exp(log_probs.mean()))
