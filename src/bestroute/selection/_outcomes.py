"""What best-of-n selection leads to on routing data: each option's outcome (the quality and
cost of the answer it gives) and BEST-Route's soft labels, computed once per dataset and
selector in a :class:`SelectionCache`."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from pydantic import ValidationError

from .._exceptions import DataError, RouterError
from ..data import RoutingDataset
from ._answers import Answer, AnswerSpec, read_answer
from ._confidence import AcceptanceModel, Signals
from ._executor import Call, Drawn, Execution, Judgment, Sample, execute, run_now, stage_keys
from ._options import Option
from ._selectors import ScoreSelector, Selector, VotingSelector, judgment, no_agreement, pick, require_confidence


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
    selector : Selector
        The selector (see :func:`make_selector`; :func:`bestroute.reward.load_selector` loads
        one from its spec).
    """

    def __init__(self, data: RoutingDataset, selector: Selector) -> None:
        self.data, self.selector = data, selector
        self.answers = answer_specs(data)
        self.memo: dict[Any, Any] = {}
        # A pointwise scorer that is faster in bulk scores whole prompts at once, when asked.
        self._bulk_scorer = selector if isinstance(selector, ScoreSelector) else None
        self._bulk = np.full(data.quality.shape, np.nan) if self._bulk_scorer is not None else None
        self._bulk_done = np.zeros(data.n_prompts, dtype=bool)

    def judge_in_bulk(self, rows: np.ndarray) -> None:
        """For a selector that is faster in bulk, judge the prompts of ``rows`` not judged yet in
        one batch, so that only the prompts asked about are judged (choosing a selector on
        validation must not pay for scoring the training and test prompts too)."""
        if self._bulk is not None and self._bulk_scorer is not None:
            todo = np.unique(np.asarray(rows, dtype=int))
            todo = todo[~self._bulk_done[todo]]
            if todo.size:
                self._bulk[todo] = self._bulk_scorer.judge_rows(self.data, todo)
                self._bulk_done[todo] = True

    def answer(self, i: int, model: str, k: int) -> Answer:
        """Sample k of ``model``'s answer to prompt i, read once as the prompt's answers are."""
        key = ("answer", i, model, k)
        if key not in self.memo:
            spec = self.answers[i] or self.selector.spec.answer
            self.memo[key] = read_answer(self.data.responses[i, self.data.model_index(model), k], spec)
        answer: Answer = self.memo[key]
        return answer

    def judgment(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """The selector's judgment of all samples of prompt i from model j, made once: every
        subset's judgment is a slice of it."""
        if (i, j) not in self.memo:
            k = _sample_count(self.data, i, j)
            if self._bulk is not None:
                self.judge_in_bulk(np.array([i]))
                self.memo[i, j] = (no_agreement(k), self._bulk[i, j, :k])
            else:
                self.memo[i, j] = self.judge_cells(i, [(j, s) for s in range(k)])
        return self.memo[i, j]

    def judge_cells(self, i: int, cells: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The selector's judgment of prompt i's samples ``cells`` ((model index, sample) pairs); a
        voting selector judges the answers read once per sample (see :meth:`answer`)."""
        data = self.data
        if isinstance(self.selector, VotingSelector):
            answers = [self.answer(i, data.models[j], k) for j, k in cells]
            rule = self.answers[i] or self.selector.spec.answer
            return self.selector.agreement(answers, rule), np.zeros(len(cells))
        return self.selector.judge(
            data.texts[i],
            [data.responses[i, j, k] for j, k in cells],
            np.array([data.quality[i, j, k] for j, k in cells]),
            self.answers[i],
        )


def answer_specs(data: RoutingDataset) -> list[AnswerSpec | None]:
    """Per prompt, how the data says its answers are read (None where it says nothing);
    DataError naming the prompt for a type that does not exist or a pattern that is not a regex."""
    if data.answer_rules is None:
        return [None] * data.n_prompts
    specs: dict[tuple[str | None, str | None], AnswerSpec | None] = {(None, None): None}
    for i, (kind, pattern) in enumerate(data.answer_rules):
        if (kind, pattern) not in specs:
            try:
                specs[kind, pattern] = AnswerSpec.model_validate({"type": kind or "auto", "pattern": pattern})
            except ValidationError as exc:
                error = exc.errors()[0]
                field = "answer_" + str(error["loc"][0]) if error["loc"] else "answer"
                message = error["msg"].removeprefix("Value error, ")
                raise DataError(f"prompt {data.prompt_ids[i]!r}: {field}: {message}", path=data.source) from None
    return [specs[rule] for rule in data.answer_rules]


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


def best_selector(
    data: RoutingDataset, rows: np.ndarray, candidates: list[Selector]
) -> tuple[Selector, dict[str, float]]:
    """The candidate whose kept samples are better on the prompts ``rows`` (by
    :func:`selected_quality`; the first of equals), and each candidate's mean quality there, by
    kind (semantic consensus: by its one-line form, which names its similarity)."""
    quality = [selected_quality(SelectionCache(data, candidate), rows) for candidate in candidates]
    best = max(range(len(candidates)), key=quality.__getitem__)
    names = [str(c.spec) if c.spec.kind == "semantic" else c.spec.kind for c in candidates]
    return candidates[best], {name: round(q, 6) for name, q in zip(names, quality, strict=True)}


def soft_labels(
    cache: SelectionCache,
    rows: np.ndarray,
    options: list[Option],
    reference: Option,
    *,
    max_subsets: int = 64,
    seed: int = 0,
    acceptance: AcceptanceModel | None = None,
) -> np.ndarray:
    """BEST-Route labels: for each prompt and option, the probability over subsets of n of the
    model's samples (exact when they are few, bootstrap otherwise) and over the reference's
    samples that the selected response's quality is >= the reference response's quality.
    NaN where the model lacks the samples. Calibrated options need the ``acceptance`` model."""
    key = ("labels", tuple(options), reference, np.asarray(rows).tobytes(), max_subsets, seed, acceptance)
    if key not in cache.memo:
        cache.memo[key] = _soft_labels(
            cache, rows, options, reference, max_subsets=max_subsets, seed=seed, acceptance=acceptance
        )
    return cache.memo[key].copy()


def _soft_labels(
    cache: SelectionCache,
    rows: np.ndarray,
    options: list[Option],
    reference: Option,
    *,
    max_subsets: int,
    seed: int,
    acceptance: AcceptanceModel | None,
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
            outcome = _outcome(cache, option, reference, acceptance)[0]
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
    """What each option realises on each prompt: the quality of the answer its run keeps (its
    own pick, or the reference's answer where it escalates) and what the run paid for. An option
    is evaluated on a prompt only where every sample it may draw is recorded."""

    quality: np.ndarray  # (P, O)
    cost: np.ndarray  # (P, O) USD
    available: np.ndarray  # (P, O) bool
    accepted: np.ndarray  # (P, O) 1 where the option kept its own pick, 0 where it escalated; NaN if unavailable


def option_outcomes(
    cache: SelectionCache,
    options: list[Option],
    reference: Option | None = None,
    acceptance: AcceptanceModel | None = None,
) -> OptionOutcomes:
    """Outcomes of ``options`` on every prompt of the cache's data, each run by the executor on
    the recorded samples; escalating options need the ``reference``, calibrated ones the
    ``acceptance`` model."""
    columns = [_outcome(cache, option, reference, acceptance) for option in options]
    quality, cost, accepted = (np.stack([c[part] for c in columns], axis=1) for part in range(3))
    return OptionOutcomes(quality=quality, cost=cost, available=~np.isnan(quality), accepted=accepted)


def recorded(data: RoutingDataset, option: Option, reference: Option | None) -> np.ndarray:
    """(P,) whether every sample ``option`` may draw (and the reference's answer, if it may
    escalate) is recorded."""
    ok = np.ones(data.n_prompts, dtype=bool)
    for model, k in stage_keys(option.stages[-1]):
        ok &= ~np.isnan(data.quality[:, data.model_index(model), k])
    if option.escalates and reference is not None:
        ok &= ~np.isnan(data.quality[:, data.model_index(reference.model), 0])
    return ok


def run_recorded(
    cache: SelectionCache, i: int, option: Option, reference: Option | None, acceptance: AcceptanceModel | None = None
) -> Execution:
    """The executor's record of ``option`` on prompt ``i``, fed the recorded samples."""
    work = execute(
        option,
        source=RecordedSource(cache.data, i),
        judge=RecordedJudge(cache, i, option),
        reference=reference.model if reference is not None else None,
        acceptance=acceptance,
    )
    return run_now(work)


def _outcome(
    cache: SelectionCache, option: Option, reference: Option | None, acceptance: AcceptanceModel | None = None
) -> tuple[np.ndarray, ...]:
    """(quality, cost, accepted) of one option on every prompt, made once per option."""
    key = ("outcome", option, reference, acceptance if option.calibrated else None)
    if key in cache.memo:
        return cache.memo[key]
    data = cache.data
    if option.escalates and reference is None:
        raise RouterError(f"option {option.label!r} escalates, but no reference was given")
    if option.judged and not option.calibrated:
        require_confidence(cache.selector)
    quality, cost, accepted = (np.full(data.n_prompts, np.nan) for _ in range(3))
    ok = recorded(data, option, reference)
    if option.samples > 1 or option.judged:
        cache.judge_in_bulk(np.flatnonzero(ok))
    for i in np.flatnonzero(ok):
        execution = run_recorded(cache, int(i), option, reference, acceptance)
        answer = execution.answer
        assert answer is not None  # recorded samples never fail
        quality[i] = data.quality[i, data.model_index(answer.model), answer.number]
        cost[i] = execution.cost_usd
        accepted[i] = float(execution.accepted)
    cache.memo[key] = (quality, cost, accepted)
    return quality, cost, accepted


def acceptance_examples(
    cache: SelectionCache, rows: np.ndarray, stages: Sequence[Option], reference: Option
) -> tuple[list[Signals], np.ndarray]:
    """What an acceptance model is fitted on: for each stage (its models and n) and each prompt
    of ``rows`` where its samples and the reference's answer are recorded, the stage's signals
    and whether its pick is as good as the reference's answer (1) or not (0)."""
    data = cache.data
    ref_j = data.model_index(reference.model)
    found: list[Signals] = []
    labels: list[float] = []
    structures = {(stage.models, stage.n) for stage in stages}
    for models, n in sorted(structures):
        stage = Option.mixture(models, n=n) if len(models) > 1 else Option(models[0], n)
        keys = stage_keys(stage)
        ok = recorded(data, stage, None) & ~np.isnan(data.quality[:, ref_j, 0])
        for i in np.asarray(rows)[ok[rows]]:
            cells = [(m, k, data.model_index(m)) for m, k in keys]
            samples = [Sample(m, k, data.responses[i, j, k]) for m, k, j in cells]
            judged = run_now(RecordedJudge(cache, int(i), stage).judge(samples, signals=True))
            assert judged.signals is not None  # a recorded judge always gives them
            _, k, j = cells[judged.picked]
            found.append(judged.signals)
            labels.append(float(data.quality[i, j, k] >= data.quality[i, ref_j, 0]))
    return found, np.array(labels)


class RecordedSource:
    """Prompt ``i``'s recorded samples as a sample source: a call returns the recorded responses,
    their tokens and their cost (the input paid once per call)."""

    def __init__(self, data: RoutingDataset, i: int) -> None:
        self.data, self.i = data, i

    async def draw(self, calls: Sequence[Call]) -> list[Drawn]:
        return [self._drawn(call) for call in calls]

    def _drawn(self, call: Call) -> Drawn:
        data, i, j = self.data, self.i, self.data.model_index(call.model)
        where = slice(call.first, call.first + call.samples)
        return Drawn(
            call,
            texts=tuple(data.responses[i, j, where]),
            input_tokens=int(data.input_tokens[i, j]),
            output_tokens=tuple(int(t) for t in data.output_tokens[i, j, where]),
            cost_usd=float(data.input_cost[i, j] + data.output_cost[i, j, where].sum()),
        )


class RecordedJudge:
    """The cache's selector judging prompt ``i``'s samples for ``option``: the samples of one
    model are a slice of that model's judgment (made once per prompt and model); samples of
    several models are judged together, once per option, and a stage's are a slice of that (or,
    for a pointwise scorer, each model's scores)."""

    def __init__(self, cache: SelectionCache, i: int, option: Option) -> None:
        self.cache, self.i, self.option = cache, i, option

    async def judge(self, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        cache, data = self.cache, self.cache.data
        models = {s.model for s in samples}
        if len(models) == 1 or cache.selector.confidence == "score":
            by_model = {m: cache.judgment(self.i, data.model_index(m)) for m in models}
            scores = np.array([by_model[s.model][1][s.number] for s in samples])
            if len(models) == 1:
                (agreement, _), numbers = by_model.popitem()[1], [s.number for s in samples]
                agreement = agreement[np.ix_(numbers, numbers)]
            else:
                agreement = no_agreement(len(samples))
        else:
            index, agreement, scores = self._judged_together()
            where = [index[s.model, s.number] for s in samples]
            agreement, scores = agreement[np.ix_(where, where)], scores[where]
        if not signals:
            return judgment(cache.selector, agreement, scores)
        return judgment(
            cache.selector,
            agreement,
            scores,
            samples=samples,
            prompt=data.texts[self.i],
            answer=cache.answers[self.i],
            reader=lambda sample: cache.answer(self.i, sample.model, sample.number),
        )

    def _judged_together(self) -> tuple[dict[tuple[str, int], int], np.ndarray, np.ndarray]:
        # Options whose last stage draws the same samples share one joint judgment per prompt.
        keys = tuple(stage_keys(self.option.stages[-1]))
        memo_key = ("joint", self.i, keys)
        if memo_key not in self.cache.memo:
            data = self.cache.data
            agreement, scores = self.cache.judge_cells(self.i, [(data.model_index(m), k) for m, k in keys])
            self.cache.memo[memo_key] = ({key: p for p, key in enumerate(keys)}, agreement, scores)
        joint: tuple[dict[tuple[str, int], int], np.ndarray, np.ndarray] = self.cache.memo[memo_key]
        return joint
