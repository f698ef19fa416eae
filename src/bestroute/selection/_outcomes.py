"""What best-of-n selection leads to on routing data: each option's outcome (the quality and
cost of the answer it gives) and BEST-Route's soft labels, computed once per dataset and
selector in a :class:`SelectionCache`."""

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from .._exceptions import RouterError
from ..data import RoutingDataset
from ._options import Option, stage_draws, stage_positions, stage_samples, stage_verdict
from ._selectors import ScoreSelector, Selector, no_agreement, pick, pick_confidence


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

    def judgment(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """The selector's judgment of all samples of prompt i from model j, made once: every
        subset's judgment is a slice of it."""
        if (i, j) not in self.memo:
            data, k = self.data, _sample_count(self.data, i, j)
            if self._bulk is not None:
                self.judge_in_bulk(np.array([i]))
                self.memo[i, j] = (no_agreement(k), self._bulk[i, j, :k])
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


def best_selector(
    data: RoutingDataset, rows: np.ndarray, candidates: list[Selector]
) -> tuple[Selector, dict[str, float]]:
    """The candidate whose kept samples are better on the prompts ``rows`` (by
    :func:`selected_quality`; the first of equals), and each candidate's mean quality there, by
    kind."""
    quality = [selected_quality(SelectionCache(data, candidate), rows) for candidate in candidates]
    best = max(range(len(candidates)), key=quality.__getitem__)
    return candidates[best], {c.spec.kind: round(q, 6) for c, q in zip(candidates, quality, strict=True)}


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
            agreement = no_agreement(len(order))
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
