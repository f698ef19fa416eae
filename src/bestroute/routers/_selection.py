"""Best-of-n selection and the soft labels and outcomes it leads to.

A selector sees only the responses (and, for the oracle bound, their ground-truth quality).
Each selector gives the samples an *agreement* matrix and a *score* each; within a subset the
pick is the sample that agrees most with the subset, then the highest score, then the earliest.
Majority vote: agreement 1 between equal final answers. Consensus (minimum Bayes risk): the
token-F1 overlap of final answers, so free-text answers that say the same thing agree. A reward
model or the oracle: no agreement, their scores.
"""

import json
import math
import re
from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar, Protocol

import numpy as np

from .._exceptions import RouterError
from ..data import RoutingDataset


@dataclass(frozen=True)
class Option:
    """A routing option: ``n`` samples from ``model``, best one kept.

    A *mixture* samples ``n`` from each model of ``mix`` (``model`` is then their names joined
    by "+") and keeps the best of all. An *escalating* option (``accept`` set) keeps its pick
    only when the selector's confidence in it is >= ``accept``; otherwise the request goes on to
    ``then``, a larger stage that draws only the samples it adds and judges them together with
    those already drawn, or, when ``then`` is None, to the reference, and pays for every stage.
    A stage with a ``then`` goes on to it only when its confidence is >= ``gate`` (below that,
    straight to the reference); with ``accept`` None it never keeps its own pick, so the
    samples so far only decide whether more are worth drawing (verify before accepting). A last
    stage without ``accept`` keeps its pick: the reference is never asked."""

    model: str
    n: int = 1
    mix: tuple[str, ...] = ()
    accept: float | None = None
    then: "Option | None" = None
    gate: float = 0.0

    def __post_init__(self) -> None:
        if self.accept is not None and not 0.0 <= self.accept <= 1.0:
            raise RouterError(f"acceptance threshold must be in [0, 1], got {self.accept}")
        if self.mix and self.model != "+".join(self.mix):
            raise RouterError(f"a mixture's model name is its models joined by '+', got {self.model!r}")
        if not 0.0 <= self.gate <= 1.0:
            raise RouterError(f"a stage's gate must be in [0, 1], got {self.gate}")
        if self.gate and self.then is None:
            raise RouterError("a gate says when to go on to the next stage; this option has none")
        if self.then is not None:
            if self.accept is None and not self.gate:
                raise RouterError(f"a stage that always goes on to {self.then.label!r} is that stage alone")
            later = self.then
            if later.models[: len(self.models)] != self.models or later.n < self.n or later.samples <= self.samples:
                raise RouterError(
                    f"next stage {later.label!r} must draw more samples than {self.label!r}, its models first"
                )

    @classmethod
    def mixture(
        cls,
        models: tuple[str, ...],
        *,
        n: int = 1,
        accept: float | None = None,
        then: "Option | None" = None,
        gate: float = 0.0,
    ) -> "Option":
        return cls("+".join(models), n, tuple(models), accept, then, gate)

    @property
    def models(self) -> tuple[str, ...]:
        return self.mix or (self.model,)

    @property
    def stages(self) -> tuple["Option", ...]:
        """This option and the stages it may go on to, in order."""
        return (self,) + (self.then.stages if self.then is not None else ())

    @property
    def judged(self) -> bool:
        """The selector's confidence decides what this stage does with its pick."""
        return self.accept is not None or self.then is not None

    @property
    def escalates(self) -> bool:
        """Some stage may send the request to the reference."""
        return self.stages[-1].accept is not None or any(stage.gate for stage in self.stages)

    @property
    def single(self) -> bool:
        """One response of one model, kept as it is."""
        return self.n == 1 and not self.mix and self.accept is None

    @property
    def composite(self) -> bool:
        """Mixes models, or judges its pick (keeps it, escalates or goes on): more than drawing n
        samples of one model."""
        return bool(self.mix) or self.judged

    @property
    def samples(self) -> int:
        """Responses drawn by this stage: n from each model."""
        return self.n * len(self.models)

    @property
    def label(self) -> str:
        base = self.model if self.n == 1 else f"{self.model} x{self.n}"
        if self.then is None:
            return base if self.accept is None else f"{base} >={self.accept:.2f} else reference"
        kept = "" if self.accept is None else f" >={self.accept:.2f} else"
        gated = f" if >={self.gate:.2f}:" if self.gate else ""
        return f"{base}{kept}{gated} {self.then.label}"


def stage_verdict(stage: Option, confidence: float | None) -> str:
    """What one stage does with its pick: "keep" it, go on to the "next" stage, or ask the
    "reference". No confidence (a selector that failed) keeps nothing and goes on nowhere."""
    if stage.accept is None and stage.then is None:
        return "keep"
    if confidence is not None and stage.accept is not None and confidence >= stage.accept - 1e-9:
        return "keep"
    if confidence is not None and stage.then is not None and confidence >= stage.gate - 1e-9:
        return "next"
    return "reference"


def stage_samples(option: Option) -> list[tuple[str, int]]:
    """The (model, sample number) pairs an option's last stage holds, in the order they are judged
    (model-major); every stage is judged on the ones it has drawn, in this order."""
    last = option.stages[-1]
    return [(model, k) for model in last.models for k in range(last.n)]


def stage_draws(option: Option) -> list[list[tuple[str, int, int]]]:
    """Per stage, the calls it adds: (model, first sample, samples) for each model it draws more of."""
    draws: list[list[tuple[str, int, int]]] = []
    before: dict[str, int] = {}
    for stage in option.stages:
        calls = [(m, before.get(m, 0), stage.n - before.get(m, 0)) for m in stage.models if stage.n > before.get(m, 0)]
        draws.append(calls)
        before = {m: stage.n for m in stage.models}
    return draws


def stage_positions(option: Option) -> list[np.ndarray]:
    """Per stage, the positions (into :func:`stage_samples`) of the samples it is judged on."""
    order = stage_samples(option)
    return [
        np.array([p for p, (m, k) in enumerate(order) if m in stage.models and k < stage.n]) for stage in option.stages
    ]


class Selector(Protocol):
    name: ClassVar[str]
    # What the selector's confidence in its pick is: "agreement" (the share of the samples that
    # agree with it), "score" (its score, a probability) or "none" (it cannot say).
    confidence: ClassVar[str]

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(agreement (k, k), scores (k,)) of the k samples. Two samples' agreement and one
        sample's score must not depend on the other samples: every subset's judgment is then a
        slice of the judgment of all samples, which is made once (see ``_judgment``)."""
        ...


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def extract_answer(response: str | None) -> str:
    """The final answer of a response, normalised: a JSON ``answer`` field, the tool calls of a
    tool-call answer (names and arguments, whole), a '####' or 'answer is' marker, else the last
    number, else the last non-empty line."""
    if not response:
        return ""
    text = response.strip()
    candidates = re.findall(r"\{.*\}", text, flags=re.DOTALL)
    for blob in candidates:
        try:
            parsed = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and "answer" in parsed:
            return _normalise_answer(str(parsed["answer"]))
        if isinstance(parsed, dict) and list(parsed) == ["tool_calls"]:  # the gateway's text of a tool-call answer
            return json.dumps(parsed["tool_calls"], sort_keys=True)
    marker = re.search(r'(?:####|answer is|"answer"\s*:)\s*"?([^"\n]+)', text, flags=re.IGNORECASE)
    if marker:
        return _normalise_answer(marker.group(1))
    numbers = _NUMBER.findall(text)
    if numbers:
        return _normalise_answer(numbers[-1])
    return _normalise_answer(text.splitlines()[-1])


def _normalise_answer(answer: str) -> str:
    answer = answer.strip().strip(".").strip().lower()
    try:
        value = float(answer.replace(",", "").replace("$", ""))
    except ValueError:
        return answer
    return repr(int(value)) if value.is_integer() else repr(value)


def _no_agreement(k: int) -> np.ndarray:
    return np.zeros((k, k))


class MajorityVote:
    """Pick the most common extracted final answer (ties: the earliest sample)."""

    name: ClassVar[str] = "majority"
    confidence: ClassVar[str] = "agreement"

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        answers = [extract_answer(r) for r in responses]
        agreement = np.array([[float(a == b) for b in answers] for a in answers])
        return agreement, np.zeros(len(answers))


def _token_f1(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return float(a == b)
    common = sum(min(a.count(t), b.count(t)) for t in set(a))
    return 2 * common / (len(a) + len(b))


class Consensus:
    """Minimum-Bayes-risk pick: the answer with the most token-F1 overlap with the others.
    Equal to majority vote on exact answers; also works when answers are free text."""

    name: ClassVar[str] = "consensus"
    confidence: ClassVar[str] = "agreement"

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = [re.findall(r"\w+", extract_answer(r)) for r in responses]
        agreement = np.array([[_token_f1(a, b) for b in tokens] for a in tokens])
        return agreement, np.zeros(len(tokens))


class OracleSelector:
    """Pick by ground-truth quality: an upper bound, never a serving selector."""

    name: ClassVar[str] = "oracle"
    confidence: ClassVar[str] = "none"  # its scores are the truth: accepting on them would cheat

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _no_agreement(len(quality)), np.asarray(quality, dtype=float)


class RewardModelSelector:
    """Pick the response a trained proxy reward model scores highest (see ``bestroute train-reward``)."""

    name: ClassVar[str] = "reward-model"
    confidence: ClassVar[str] = "score"

    def __init__(self, path: str) -> None:
        from ..reward import RewardModel

        self.model = RewardModel.load(path)

    def judge(self, prompt: str, responses: list[str | None], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = [r or "" for r in responses]
        return _no_agreement(len(texts)), self.model.score([prompt] * len(texts), texts)

    def judge_rows(self, data: RoutingDataset, rows: np.ndarray) -> np.ndarray:
        """Scores of every scored sample of the prompts ``rows`` (len(rows), M, K; NaN elsewhere)
        in one batch: embedding texts in bulk is far faster than one prompt's samples at a time."""
        quality = data.quality[rows]
        where = np.argwhere(~np.isnan(quality))
        scores = np.full(quality.shape, np.nan)
        scores[tuple(where.T)] = self.model.score(
            [data.texts[rows[r]] for r in where[:, 0]], [data.responses[rows[r], j, k] or "" for r, j, k in where]
        )
        return scores


SELECTORS: dict[str, type] = {s.name: s for s in (MajorityVote, Consensus, OracleSelector)}


def make_selector(name: str) -> Selector:
    """``majority``, ``consensus``, ``oracle``, or ``reward-model:PATH`` (a reward-model artifact)."""
    if name.startswith(RewardModelSelector.name + ":"):
        return RewardModelSelector(name.split(":", 1)[1])
    if name not in SELECTORS:
        raise RouterError(f"unknown selector {name!r}; choose one of {', '.join(SELECTORS)} or reward-model:PATH")
    return SELECTORS[name]()


def pick(agreement: np.ndarray, scores: np.ndarray, subset: np.ndarray) -> int:
    """Index (into the samples) of the sample the selector keeps from ``subset``."""
    support = agreement[np.ix_(subset, subset)].sum(axis=1)
    order = np.lexsort((np.arange(len(subset)), -scores[subset], -support))
    return int(subset[order[0]])


def pick_confidence(selector: Selector, agreement: np.ndarray, scores: np.ndarray, picked: int) -> float:
    """The selector's confidence in the sample it picked from all of ``agreement``'s samples."""
    if selector.confidence == "agreement":
        return float(agreement[picked].mean())
    if selector.confidence == "score":
        return float(scores[picked])
    raise RouterError(
        f"selector {selector.name!r} gives no confidence in its pick, so nothing can "
        "escalate on it; use consensus, majority or a reward model"
    )


def _subsets(k: int, n: int, *, max_subsets: int, rng: np.random.Generator) -> np.ndarray:
    """All n-subsets of k samples when there are few, else ``max_subsets`` random ones."""
    if math.comb(k, n) <= max_subsets:
        return np.array(list(combinations(range(k), n)))
    return np.array([np.sort(rng.choice(k, size=n, replace=False)) for _ in range(max_subsets)])


def _sample_count(data: RoutingDataset, i: int, j: int) -> int:
    """How many samples prompt i has from model j: they are numbered from 0, so the run of
    scored ones from sample 0."""
    return int((~np.isnan(data.quality[i, j])).cumprod().sum())


class SelectionCache:
    """What is computed from one dataset with one selector: the selector's judgment of each
    prompt's samples, option outcomes and soft labels. An evaluation makes one and passes it to
    every router it fits (several per router, to choose hyperparameters), so each is computed
    once; a router fitted without one makes its own.

    Parameters
    ----------
    data : RoutingDataset
        The routing data.
    selector : str
        The selector, by the name routers take (``consensus``, ``reward-model:PATH``, ...).
    """

    def __init__(self, data: RoutingDataset, selector: str) -> None:
        self.data, self.spec, self.selector = data, selector, make_selector(selector)
        self.memo: dict[Any, Any] = {}
        # A pointwise scorer that is faster in bulk scores whole prompts at once, when asked.
        self._bulk = np.full(data.quality.shape, np.nan) if hasattr(self.selector, "judge_rows") else None
        self._bulk_done = np.zeros(data.n_prompts, dtype=bool)

    def judge_in_bulk(self, rows: np.ndarray) -> None:
        """For a selector that is faster in bulk, judge the prompts of ``rows`` not judged yet in
        one batch, so that only the prompts asked about are judged (choosing a selector on
        validation must not pay for scoring the training and test prompts too)."""
        if self._bulk is not None:
            todo = np.unique(np.asarray(rows, dtype=int))
            todo = todo[~self._bulk_done[todo]]
            if todo.size:
                self._bulk[todo] = self.selector.judge_rows(self.data, todo)  # type: ignore[attr-defined]
                self._bulk_done[todo] = True

    def judgment(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """The selector's judgment of all samples of prompt i from model j, made once: every
        subset's judgment is a slice of it."""
        if (i, j) not in self.memo:
            data, k = self.data, _sample_count(self.data, i, j)
            if self._bulk is not None:
                self.judge_in_bulk(np.array([i]))
                self.memo[i, j] = (_no_agreement(k), self._bulk[i, j, :k])
            else:
                self.memo[i, j] = self.selector.judge(
                    data.texts[i], list(data.responses[i, j, :k]), data.quality[i, j, :k]
                )
        return self.memo[i, j]


def selected_quality(cache: SelectionCache, rows: np.ndarray) -> float:
    """How well the cache's selector picks: the mean quality of the sample it keeps from all of
    a model's samples, over the (prompt, model) pairs of ``rows`` that have at least two; NaN if
    none do."""
    data = cache.data
    cache.judge_in_bulk(rows)
    kept = []
    for i in rows:
        for j in range(len(data.models)):
            k = _sample_count(data, i, j)
            if k >= 2:
                agreement, scores = cache.judgment(i, j)
                kept.append(data.quality[i, j, pick(agreement, scores, np.arange(k))])
    return float(np.mean(kept)) if kept else float("nan")


def soft_labels(
    cache: SelectionCache,
    rows: np.ndarray,
    options: list[Option],
    reference: Option,
    *,
    max_subsets: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """BEST-Route labels: for each prompt and option, the probability over subsets of n of the
    model's samples (exact when they are few, bootstrap otherwise) and over the reference's
    samples that the selected response's quality is >= the reference response's quality.
    NaN where the model lacks the samples."""
    key = ("labels", tuple(options), reference, np.asarray(rows).tobytes(), max_subsets, seed)
    if key not in cache.memo:
        cache.memo[key] = _soft_labels(cache, rows, options, reference, max_subsets=max_subsets, seed=seed)
    return cache.memo[key].copy()


def _soft_labels(
    cache: SelectionCache,
    rows: np.ndarray,
    options: list[Option],
    reference: Option,
    *,
    max_subsets: int,
    seed: int,
) -> np.ndarray:
    data = cache.data
    rng = np.random.default_rng(seed)
    ref_j = data.model_index(reference.model)
    if any(option.n > 1 for option in options):
        cache.judge_in_bulk(rows)
    labels = np.full((len(rows), len(options)), np.nan)
    for o, option in enumerate(options):
        if option.composite:
            # Its outcome is already the whole policy's (its pick, or the reference's answer):
            # the label is how often that is as good as the reference.
            outcome = _composite_outcomes(cache, option, reference)[0]
            for r, i in enumerate(rows):
                ref_q = _scored(data.quality[i, ref_j])
                if not np.isnan(outcome[i]) and ref_q.size:
                    labels[r, o] = float(np.mean(outcome[i] >= ref_q))
            continue
        j = data.model_index(option.model)
        for r, i in enumerate(rows):
            quality = data.quality[i, j]
            k = _sample_count(data, i, j)
            ref_q = _scored(data.quality[i, ref_j])
            if k < option.n or ref_q.size == 0:
                continue
            if k == 1:
                labels[r, o] = float(np.mean(quality[0] >= ref_q))
                continue
            agreement, scores = cache.judgment(i, j)
            picked = np.array(
                [quality[pick(agreement, scores, s)] for s in _subsets(k, option.n, max_subsets=max_subsets, rng=rng)]
            )
            labels[r, o] = float(np.mean(picked[:, None] >= ref_q[None, :]))
    return labels


def _scored(quality: np.ndarray) -> np.ndarray:
    """The qualities of the samples that exist (NaN marks a missing one)."""
    return quality[~np.isnan(quality)]


@dataclass(frozen=True)
class OptionOutcomes:
    """What each option realises on each prompt: the quality of the response the selector keeps
    from the first n samples, and the cost of the call (input once, n outputs). An escalating
    option realises the reference's response where it escalates, and pays for both."""

    quality: np.ndarray  # (P, O)
    cost: np.ndarray  # (P, O) USD
    available: np.ndarray  # (P, O) bool
    accepted: np.ndarray  # (P, O) 1 where the option kept its own pick, 0 where it escalated; NaN if unavailable


def option_outcomes(cache: SelectionCache, options: list[Option], reference: Option | None = None) -> OptionOutcomes:
    """Outcomes of ``options`` on every prompt of the cache's data; escalating options need the
    ``reference``."""
    key = ("outcomes", tuple(options), reference)
    if key not in cache.memo:
        cache.memo[key] = _option_outcomes(cache, options, reference)
    return cache.memo[key]


def _option_outcomes(cache: SelectionCache, options: list[Option], reference: Option | None) -> OptionOutcomes:
    data = cache.data
    shape = (data.n_prompts, len(options))
    quality, cost, accepted = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    if any(option.n > 1 for option in options):
        cache.judge_in_bulk(np.arange(data.n_prompts))
    for o, option in enumerate(options):
        if option.composite:
            quality[:, o], cost[:, o], accepted[:, o] = _composite_outcomes(cache, option, reference)
            continue
        j = data.model_index(option.model)
        q = data.quality[:, j, : option.n]
        ok = ~np.isnan(q).any(axis=1)
        cost[ok, o] = data.input_cost[ok, j] + data.output_cost[ok, j, : option.n].sum(axis=1)
        accepted[ok, o] = 1.0
        if option.n == 1:
            quality[ok, o] = q[ok, 0]
            continue
        subset = np.arange(option.n)
        for i in np.flatnonzero(ok):
            agreement, scores = cache.judgment(int(i), j)
            quality[i, o] = q[i, pick(agreement, scores, subset)]
    return OptionOutcomes(quality=quality, cost=cost, available=~np.isnan(quality), accepted=accepted)


def _composite_outcomes(
    cache: SelectionCache, option: Option, reference: Option | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, cost, accepted) per prompt of a mixture or escalating option, made once per
    option: the samples of its last stage are judged together once, and each stage in turn picks
    among the ones it has drawn and pays for the calls it adds; the first stage that keeps its
    pick answers, else the reference does (``accepted`` 0)."""
    data, selector = cache.data, cache.selector
    key = ("composite", option, reference)
    if key in cache.memo:
        return cache.memo[key]
    if option.escalates and reference is None:
        raise RouterError(f"option {option.label!r} escalates, but no reference was given")
    order = [(data.model_index(m), k) for m, k in stage_samples(option)]
    rows, cols = np.array([j for j, _ in order]), np.array([k for _, k in order])
    q = data.quality[:, rows, cols]  # (P, samples of the last stage)
    ok = ~np.isnan(q).any(axis=1)
    stage_cost = [
        sum(
            data.input_cost[:, data.model_index(m)]
            + data.output_cost[:, data.model_index(m), k : k + count].sum(axis=1)
            for m, k, count in calls
        )
        for calls in stage_draws(option)
    ]
    ref_quality, ref_cost = np.full(data.n_prompts, np.nan), np.zeros(data.n_prompts)
    if option.escalates:
        ref_j = data.model_index(reference.model)  # type: ignore[union-attr]
        ref_quality, ref_cost = data.quality[:, ref_j, 0], data.single_sample_cost()[:, ref_j]
        ok &= ~np.isnan(ref_quality)
    quality, cost, accepted = (np.full(data.n_prompts, np.nan) for _ in range(3))
    positions = stage_positions(option)
    pointwise = selector.confidence == "score"
    if pointwise:  # pointwise scores: reuse each model's judgment (made in bulk)
        cache.judge_in_bulk(np.flatnonzero(ok))
    for i in np.flatnonzero(ok):
        if pointwise:
            agreement = _no_agreement(len(order))
            by_model = {j: cache.judgment(int(i), j)[1] for j in set(rows.tolist())}
            scores = np.array([by_model[j][k] for j, k in order])
        else:  # agreement is pairwise across models: judge the samples together
            agreement, scores = selector.judge(data.texts[i], [data.responses[i, j, k] for j, k in order], q[i])
        spent, kept = 0.0, False
        for stage, where, paid in zip(option.stages, positions, stage_cost):
            spent += paid[i]
            sub_agreement, sub_scores = agreement[np.ix_(where, where)], scores[where]
            picked = pick(sub_agreement, sub_scores, np.arange(len(where)))
            confidence = pick_confidence(selector, sub_agreement, sub_scores, picked) if stage.judged else None
            verdict = stage_verdict(stage, confidence)
            kept = verdict == "keep"
            if verdict != "next":
                break
        quality[i] = q[i, where[picked]] if kept else ref_quality[i]
        cost[i] = spent + (0.0 if kept else ref_cost[i])
        accepted[i] = float(kept)
    cache.memo[key] = (quality, cost, accepted)
    return quality, cost, accepted
