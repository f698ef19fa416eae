"""Best-of-n selectors: which of n sampled responses is kept, and how sure the selector is.

A selector sees only the responses (and, for the oracle bound, their ground-truth quality).
Each selector gives the samples an *agreement* matrix and a *score* each; within a subset the
pick is the sample that agrees most with the subset, then the highest score, then the earliest.
Majority vote: agreement 1 between equal final answers. Consensus (minimum Bayes risk): the
token-F1 overlap of final answers, so free-text answers that say the same thing agree. A reward
model or the oracle: no agreement, their scores.
"""

import re
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal, Protocol, get_args

import numpy as np
from pydantic import Field, ValidationError, model_validator

from .._exceptions import RouterError
from .._section import Section
from ..data import RoutingDataset
from ._answers import extract_answer
from ._executor import Judgment

SelectorKind = Literal["majority", "consensus", "oracle", "reward-model", "reward", "judge"]
# The part after "kind:" in a selector's one-line form names this field.
_TARGET = {"reward-model": "path", "reward": "url", "judge": "backend"}
# Kinds judged in process, offline and online alike; the others call a service.
IN_PROCESS = ("majority", "consensus", "oracle", "reward-model")


class SelectorSpec(Section):
    """How best-of-n keeps one response: a router's ``selector`` hyperparameter in its one-line
    form (``consensus``, ``reward-model:PATH``; :meth:`parse`, ``str()``), the gateway's
    ``selector`` section in its YAML form.

    ``majority`` and ``consensus`` vote on final answers; ``reward-model`` scores with a trained
    proxy reward model (``bestroute train-reward``); ``oracle`` picks by ground-truth quality
    (an upper bound, offline only); ``reward`` (a scoring endpoint) and ``judge`` (an LLM
    backend) call a service, so they select online only."""

    kind: SelectorKind = "consensus"
    path: Path | None = Field(default=None, description="reward-model: artifact from `bestroute train-reward`")
    url: str | None = Field(default=None, description="reward: POST {prompt, responses} -> {scores}")
    backend: str | None = Field(default=None, description="judge: the backend that judges")
    timeout_s: float = Field(default=30.0, gt=0, description="reward: seconds per scoring call")

    @model_validator(mode="after")
    def _needs_target(self) -> "SelectorSpec":
        for kind, field in _TARGET.items():
            if self.kind == kind and not getattr(self, field):
                raise ValueError(f"selector kind {kind!r} needs {field}")
        return self

    @classmethod
    def parse(cls, text: str) -> "SelectorSpec":
        """``kind`` or ``kind:target`` (``reward-model:PATH``, ``reward:URL``, ``judge:BACKEND``)."""
        kind, sep, target = text.partition(":")
        fields: dict[str, object] = {"kind": kind}
        if sep:
            if kind not in _TARGET:
                raise RouterError(f"selector {kind!r} takes no target, got {text!r}")
            if target:  # "kind:" names no target: the same error as "kind"
                fields[_TARGET[kind]] = target
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            choices = ", ".join(f"{k}:{_TARGET[k].upper()}" if k in _TARGET else k for k in get_args(SelectorKind))
            raise RouterError(f"bad selector {text!r} ({exc.errors()[0]['msg']}); choose one of {choices}") from None

    def __str__(self) -> str:
        target = getattr(self, _TARGET[self.kind]) if self.kind in _TARGET else None
        return self.kind if target is None else f"{self.kind}:{target}"


class Selector(Protocol):
    """A selector judged in process: it sees the whole set of samples at once."""

    @property
    def spec(self) -> SelectorSpec: ...

    # What the selector's confidence in its pick is: "agreement" (the share of the samples that
    # agree with it), "score" (its score, a probability) or "none" (it cannot say).
    @property
    def confidence(self) -> str: ...

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(agreement (k, k), scores (k,)) of the k samples. Two samples' agreement and one
        sample's score must not depend on the other samples: every subset's judgment is then a
        slice of the judgment of all samples, which is made once (see ``SelectionCache``)."""
        ...


class ResponseScorer(Protocol):
    """A pointwise scorer of (prompt, response) pairs, such as :class:`bestroute.reward.RewardModel`."""

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


def no_agreement(k: int) -> np.ndarray:
    return np.zeros((k, k))


class MajorityVote:
    """Pick the most common extracted final answer (ties: the earliest sample)."""

    spec: ClassVar[SelectorSpec] = SelectorSpec(kind="majority")
    confidence: ClassVar[str] = "agreement"

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        answers = [extract_answer(r) for r in responses]
        agreement = np.array([[float(a == b) for b in answers] for a in answers])
        return agreement, np.zeros(len(answers))


def _token_f1(a: Counter[str], b: Counter[str]) -> float:
    """Token-F1 overlap of two bags of tokens, linear in their sizes (long answers stay cheap)."""
    size_a, size_b = a.total(), b.total()
    if not size_a or not size_b:
        return float(size_a == size_b)
    return 2 * (a & b).total() / (size_a + size_b)


class Consensus:
    """Minimum-Bayes-risk pick: the answer with the most token-F1 overlap with the others.
    Equal to majority vote on exact answers; also works when answers are free text."""

    spec: ClassVar[SelectorSpec] = SelectorSpec(kind="consensus")
    confidence: ClassVar[str] = "agreement"

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = [Counter(re.findall(r"\w+", extract_answer(r))) for r in responses]
        agreement = np.array([[_token_f1(a, b) for b in tokens] for a in tokens])
        return agreement, np.zeros(len(tokens))


class OracleSelector:
    """Pick by ground-truth quality: an upper bound, never a serving selector."""

    spec: ClassVar[SelectorSpec] = SelectorSpec(kind="oracle")
    confidence: ClassVar[str] = "none"  # its scores are the truth: accepting on them would cheat

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return no_agreement(len(quality)), np.asarray(quality, dtype=float)


class ScoreSelector:
    """Pick the response a pointwise scorer (a trained proxy reward model) scores highest; its
    confidence is that score."""

    confidence: ClassVar[str] = "score"

    def __init__(self, scorer: ResponseScorer, spec: SelectorSpec) -> None:
        self.scorer, self.spec = scorer, spec

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = [r or "" for r in responses]
        return no_agreement(len(texts)), self.scorer.score([prompt] * len(texts), texts)

    def judge_rows(self, data: RoutingDataset, rows: np.ndarray) -> np.ndarray:
        """Scores of every scored sample of the prompts ``rows`` (len(rows), M, K; NaN elsewhere)
        in one batch: embedding texts in bulk is far faster than one prompt's samples at a time."""
        quality = data.quality[rows]
        where = np.argwhere(~np.isnan(quality))
        scores = np.full(quality.shape, np.nan)
        scores[tuple(where.T)] = self.scorer.score(
            [data.texts[rows[r]] for r in where[:, 0]], [data.responses[rows[r], j, k] or "" for r, j, k in where]
        )
        return scores


def make_selector(spec: SelectorSpec, *, scorer: ResponseScorer | None = None) -> Selector:
    """The in-process selector ``spec`` names; ``reward-model`` needs its loaded ``scorer``
    (:func:`bestroute.reward.load_selector` loads it from the spec's path)."""
    if spec.kind == "reward-model":
        if scorer is None:
            raise RouterError(f"selector {spec} needs its reward model loaded (bestroute.reward.load_selector)")
        return ScoreSelector(scorer, spec)
    if spec.kind not in IN_PROCESS:
        raise RouterError(f"selector {spec} calls a service, so it selects in the gateway only")
    by_kind: dict[str, type[MajorityVote | Consensus | OracleSelector]] = {
        "majority": MajorityVote,
        "consensus": Consensus,
        "oracle": OracleSelector,
    }
    return by_kind[spec.kind]()


def pick(agreement: np.ndarray, scores: np.ndarray, subset: np.ndarray) -> int:
    """Index (into the samples) of the sample the selector keeps from ``subset``."""
    support = agreement[np.ix_(subset, subset)].sum(axis=1)
    order = np.lexsort((np.arange(len(subset)), -scores[subset], -support))
    return int(subset[order[0]])


def pick_confidence(selector: Selector, agreement: np.ndarray, scores: np.ndarray, picked: int) -> float | None:
    """The selector's confidence in the sample it picked from all of ``agreement``'s samples
    (None for a selector that gives none)."""
    if selector.confidence == "agreement":
        return float(agreement[picked].mean())
    if selector.confidence == "score":
        return float(scores[picked])
    return None


def require_confidence(selector: Selector) -> None:
    """RouterError unless the selector's confidence can decide what a stage does."""
    if selector.confidence == "none":
        raise RouterError(
            f"selector {selector.spec} gives no confidence in its pick, so nothing can "
            "escalate on it; use consensus, majority or a reward model"
        )


def judgment(selector: Selector, agreement: np.ndarray, scores: np.ndarray) -> Judgment:
    """The selector's pick among all the judged samples and its confidence in it: the one rule,
    offline and in the gateway."""
    picked = pick(agreement, scores, np.arange(len(scores)))
    return Judgment(picked, pick_confidence(selector, agreement, scores, picked))
