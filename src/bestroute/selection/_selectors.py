"""Best-of-n selectors: which of n sampled responses is kept, and how sure the selector is.

A selector sees only the responses (and, for the oracle bound, their ground-truth quality).
Each selector gives the samples an *agreement* matrix and a *score* each; within a subset the
pick is the sample that agrees most with the subset, then the highest score, then the earliest.
Both voting selectors read final answers by type (:mod:`._answers`, as the selector's ``answer``
section or the prompt's data says). Majority vote: agreement 1 between equivalent answers.
Consensus (minimum Bayes risk): the same for typed answers (numbers, dates, letters, literals),
and the token-F1 overlap of free-text answers, so answers that say the same thing in other words
agree in part. A reward model or the oracle: no agreement, their scores.
"""

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal, Protocol, get_args

import numpy as np
from pydantic import Field, ValidationError, model_validator

from .._exceptions import RouterError
from .._section import Section
from ..data import RoutingDataset
from ..features import MiniLMEmbedder
from ._answers import AUTO, Answer, AnswerSpec, equivalent, read_answer
from ._confidence import Signals, stage_signals
from ._executor import Judgment, Sample

SelectorKind = Literal["majority", "consensus", "semantic", "oracle", "reward-model", "reward", "judge"]
# The part after "kind:" in a selector's one-line form names this field.
_TARGET = {"reward-model": "path", "reward": "url", "judge": "backend", "semantic": "similarity"}
# Kinds judged in process, offline and online alike; the others call a service.
IN_PROCESS = ("majority", "consensus", "semantic", "oracle", "reward-model")


class SelectorSpec(Section):
    """How best-of-n keeps one response: a router's ``selector`` hyperparameter in its one-line
    form (``consensus``, ``reward-model:PATH``; :meth:`parse`, ``str()``), the gateway's
    ``selector`` section in its YAML form.

    ``majority`` and ``consensus`` vote on final answers; ``semantic`` too, with free-text
    answers in one cluster where their MiniLM embeddings' cosine is >= ``similarity`` (the
    ``embed`` extra; ``bestroute train --selector auto`` fits it on validation); ``reward-model`` scores with a trained
    proxy reward model (``bestroute train-reward``); ``oracle`` picks by ground-truth quality
    (an upper bound, offline only); ``reward`` (a scoring endpoint) and ``judge`` (an LLM
    backend) call a service, so they select online only."""

    kind: SelectorKind = "consensus"
    path: Path | None = Field(default=None, description="reward-model: artifact from `bestroute train-reward`")
    url: str | None = Field(default=None, description="reward: POST {prompt, responses} -> {scores}")
    backend: str | None = Field(default=None, description="judge: the backend that judges")
    timeout_s: float = Field(default=30.0, gt=0, description="reward: seconds per scoring call")
    answer: AnswerSpec = Field(default=AUTO, description="majority, consensus, semantic: how answers are read")
    similarity: float = Field(default=0.85, gt=0, le=1, description="semantic: cosine that puts two answers together")

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

    def judge(
        self, prompt: str, responses: list[str | None], quality: np.ndarray, answer: AnswerSpec | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(agreement (k, k), scores (k,)) of the k samples; ``answer`` says how the prompt's
        answers are read (None: as the selector's spec says). Two samples' agreement and one
        sample's score must not depend on the other samples: every subset's judgment is then a
        slice of the judgment of all samples, which is made once (see ``SelectionCache``)."""
        ...


class ResponseScorer(Protocol):
    """A pointwise scorer of (prompt, response) pairs, such as :class:`bestroute.reward.RewardModel`."""

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


def no_agreement(k: int) -> np.ndarray:
    return np.zeros((k, k))


class VotingSelector:
    """A selector that votes on the samples' final answers, read as the prompt's answer spec (or
    its own) says; subclasses say how much two answers agree."""

    confidence: ClassVar[str] = "agreement"
    kind: ClassVar[SelectorKind]

    def __init__(self, spec: SelectorSpec | None = None) -> None:
        self.spec = spec or SelectorSpec(kind=self.kind)

    def judge(
        self, prompt: str, responses: list[str | None], quality: np.ndarray, answer: AnswerSpec | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rule = answer or self.spec.answer
        return self.agreement([read_answer(r, rule) for r in responses], rule), np.zeros(len(responses))

    def agreement(self, answers: list[Answer], rule: AnswerSpec) -> np.ndarray:
        """(k, k) agreement of the answers (offline, judged from answers read once per sample)."""
        raise NotImplementedError


def _matrix(k: int, agree: Callable[[int, int], float]) -> np.ndarray:
    """The symmetric (k, k) agreement matrix of k samples, each pair compared once."""
    agreement = np.zeros((k, k))
    for a in range(k):
        for b in range(a, k):
            agreement[a, b] = agreement[b, a] = agree(a, b)
    return agreement


class MajorityVote(VotingSelector):
    """Pick the most common final answer, equivalent answers counted together (ties: the
    earliest sample)."""

    kind: ClassVar[SelectorKind] = "majority"

    def agreement(self, answers: list[Answer], rule: AnswerSpec) -> np.ndarray:
        return _matrix(len(answers), lambda a, b: float(equivalent(answers[a], answers[b], rel_tol=rule.rel_tol)))


def _token_f1(a: Counter[str], b: Counter[str]) -> float:
    """Token-F1 overlap of two bags of tokens, linear in their sizes (long answers stay cheap)."""
    size_a, size_b = a.total(), b.total()
    if not size_a or not size_b:
        return 0.0
    return 2 * (a & b).total() / (size_a + size_b)


class Consensus(VotingSelector):
    """Minimum-Bayes-risk pick: the answer that agrees most with the others, typed answers by
    equivalence, free-text answers by token-F1 overlap. Equal to majority vote on typed answers;
    also works when answers are free text."""

    kind: ClassVar[SelectorKind] = "consensus"

    def agreement(self, answers: list[Answer], rule: AnswerSpec) -> np.ndarray:
        return consensus_agreement(answers, rule)


def consensus_agreement(answers: list[Answer], rule: AnswerSpec) -> np.ndarray:
    """Consensus's agreement of answers: equivalence for typed answers, token-F1 for free text."""
    tokens = [Counter(re.findall(r"\w+", a.value)) if a.kind == "text" else Counter() for a in answers]

    def agree(a: int, b: int) -> float:
        if answers[a].kind == answers[b].kind == "text":
            return _token_f1(tokens[a], tokens[b])
        return float(equivalent(answers[a], answers[b], rel_tol=rule.rel_tol))

    return _matrix(len(answers), agree)


class SemanticConsensus(VotingSelector):
    """Consensus whose free-text answers agree when they mean the same: two answers are in one
    cluster where their MiniLM sentence embeddings' cosine is >= the spec's ``similarity``; typed
    answers still agree by equivalence. Answers are embedded once each (and cached on disk)."""

    kind: ClassVar[SelectorKind] = "semantic"

    def __init__(self, spec: SelectorSpec | None = None) -> None:
        super().__init__(spec)
        self._embedder: MiniLMEmbedder | None = None

    def agreement(self, answers: list[Answer], rule: AnswerSpec) -> np.ndarray:
        texts = [p for p, a in enumerate(answers) if a.kind == "text"]
        vectors: dict[int, np.ndarray] = {}
        if len(texts) > 1:
            if self._embedder is None:
                self._embedder = MiniLMEmbedder()
            embedded = self._embedder.transform([answers[p].value for p in texts])
            vectors = dict(zip(texts, embedded, strict=True))

        def agree(a: int, b: int) -> float:
            if a in vectors and b in vectors:
                return float(a == b or float(vectors[a] @ vectors[b]) >= self.spec.similarity - 1e-9)
            return float(equivalent(answers[a], answers[b], rel_tol=rule.rel_tol))

        return _matrix(len(answers), agree)


class OracleSelector:
    """Pick by ground-truth quality: an upper bound, never a serving selector."""

    spec: ClassVar[SelectorSpec] = SelectorSpec(kind="oracle")
    confidence: ClassVar[str] = "none"  # its scores are the truth: accepting on them would cheat

    def judge(
        self, prompt: str, responses: list[str | None], quality: np.ndarray, answer: AnswerSpec | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return no_agreement(len(quality)), np.asarray(quality, dtype=float)


class ScoreSelector:
    """Pick the response a pointwise scorer (a trained proxy reward model) scores highest; its
    confidence is that score."""

    confidence: ClassVar[str] = "score"

    def __init__(self, scorer: ResponseScorer, spec: SelectorSpec) -> None:
        self.scorer, self.spec = scorer, spec

    def judge(
        self, prompt: str, responses: list[str | None], quality: np.ndarray, answer: AnswerSpec | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
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
    if spec.kind == "oracle":
        return OracleSelector()
    if spec.kind == "semantic":
        return SemanticConsensus(spec)
    return MajorityVote(spec) if spec.kind == "majority" else Consensus(spec)


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


def judgment(
    selector: Selector,
    agreement: np.ndarray,
    scores: np.ndarray,
    *,
    samples: Sequence[Sample] | None = None,
    prompt: str = "",
    answer: AnswerSpec | None = None,
    reader: Callable[[Sample], Answer] | None = None,
) -> Judgment:
    """The selector's pick among all the judged samples and its confidence in it: the one rule,
    offline and in the gateway. Given the ``samples`` (and the ``prompt``, and how its answers
    are read), the Judgment also carries the stage's signals; ``reader`` reads a sample's answer
    as ``answer`` says (offline: from answers read once)."""
    picked = pick(agreement, scores, np.arange(len(scores)))
    confidence = pick_confidence(selector, agreement, scores, picked)
    if samples is None:
        return Judgment(picked, confidence)
    rule = answer or selector.spec.answer
    read = reader or (lambda sample: read_answer(sample.text, rule))
    found = judged_signals(selector, agreement, scores, picked, samples, prompt, rule, read)
    return Judgment(picked, confidence, signals=found)


def judged_signals(
    selector: Selector,
    agreement: np.ndarray,
    scores: np.ndarray,
    picked: int,
    samples: Sequence[Sample],
    prompt: str,
    rule: AnswerSpec,
    read: Callable[[Sample], Answer],
) -> Signals:
    """The signals of a stage whose samples the selector judged: agreement is the selector's if
    it votes, else consensus's over the answers (read by ``read``, as ``rule`` says); scores
    count only for a selector that scores."""
    if selector.confidence == "agreement":
        answers = {picked: read(samples[picked])}
    else:
        every = [read(s) for s in samples]
        agreement, answers = consensus_agreement(every, rule), dict(enumerate(every))
    return stage_signals(
        agreement,
        scores if selector.confidence == "score" else None,
        picked,
        [s.model for s in samples],
        answers[picked],
        len(prompt),
    )
