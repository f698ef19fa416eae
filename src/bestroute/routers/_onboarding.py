"""Adding models to a trained BEST-Route router from their answers to its representative prompts,
and removing models from it, without retraining."""

import copy
import dataclasses
import itertools
from collections.abc import Collection, Iterator

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from .._exceptions import RouterError
from ..data import RoutingDataset
from ..features import CostHeads, RepresentativePrompts, fit_head_near
from ..reward import load_selector
from ..selection import Option, SelectionCache, equivalent, option_outcomes
from ._best_route import BestRouteRouter, _dominated

MIN_CALIBRATION_PROMPTS = 20
# A new option's prior head is the mean of the heads of the existing options whose labels on the
# representative prompts are nearest to its own, weighted by the inverse of that distance (plus
# a floor, so that one option that happens to match is not the whole prior).
NEIGHBOURS = 5
DISTANCE_FLOOR = 0.02
# How strongly a new head is held to its prior, against the weighted cross-entropy of its labels
# on the representative prompts (their weights average one).
PRIOR_STRENGTH = 3.0
# A new option's twin is the same option with each new model replaced by one of its TWINS existing
# models most like it (see _twins); the nearest whose option the router uses lends its head.
TWINS = 5
# Standard errors below its labels' mean that a new head's mean prediction on the calibration
# prompts is set to (onboard's ``caution``): a head that overrates an option makes the router pick
# it where it loses quality, one that underrates it only forgoes a saving.
CAUTION = 1.0


def calls(option: Option, models: Collection[str]) -> bool:
    """Some stage of ``option`` samples one of ``models`` (escalating to the reference does not count)."""
    return any(model in models for stage in option.stages for model in stage.models)


def onboard(router: BestRouteRouter, answers: RoutingDataset, *, caution: float = CAUTION) -> BestRouteRouter:
    """A copy of ``router`` that also routes to the models of ``answers``: their recorded answers
    (scored, as in any routing data) to some of the router's representative prompts.

    The router's own options are kept as they are. The new models get the options the router
    would have made for them (alone, in mixtures and staged options with the others) from the
    representative prompts, where every model's answers are known; each new option is
    represented by its labels on those prompts (how often it is as good as the reference there,
    each prompt weighted by the training prompts it stands for). An option that mixes new
    models with existing ones starts from its twin's head, where the router has a twin: the same
    option with each new model replaced by an existing model most like it (:func:`_twins`);
    other options start from the heads of the existing options with the nearest labels. The
    head is fitted to its labels, held to that start (:func:`~bestroute.features.fit_head_near`),
    and its intercept then set so that its mean prediction there is its twin's plus the mean
    difference of their labels, or without a twin its labels' mean, less ``caution`` standard
    errors (a borrowed start can overrate an option, and a few prompts cannot say by how much).
    Its cost is its weighted mean cost there. The change record (``changes_``) maps each new
    option that had a twin to it. The operating table is re-estimated on the representative
    prompts.

    Raises RouterError for a router without representative prompts, a model it already has, a
    prompt that is not one of its representative prompts (or has another text), fewer than
    ``MIN_CALIBRATION_PROMPTS`` representative prompts answered by every new model, and a
    negative or non-finite ``caution``.
    """
    if not 0 <= caution < np.inf:
        raise RouterError(f"caution is a number of standard errors, 0 or more; got {caution}")
    calibration, representative = _calibration(router)
    taken = [model for model in answers.models if model in calibration.models]
    if taken:
        raise RouterError(
            f"model {taken[0]!r} is already one of the router's models: remove it first (bestroute remove) "
            "or give the new one another name"
        )
    position = {pid: p for p, pid in enumerate(calibration.prompt_ids)}
    foreign = [pid for pid in answers.prompt_ids if pid not in position]
    if foreign:
        raise RouterError(
            f"{len(foreign)} of the {answers.n_prompts} prompts answered are not the router's representative "
            f"prompts (first: {foreign[0]!r}); answer the prompts `bestroute calibration` writes"
        )
    changed = [pid for pid, text in zip(answers.prompt_ids, answers.texts) if calibration.texts[position[pid]] != text]
    if changed:
        raise RouterError(f"prompt {changed[0]!r} has another text than the router's representative prompt of that id")
    complete = np.flatnonzero(answers.available.all(axis=1))
    if len(complete) < MIN_CALIBRATION_PROMPTS:
        raise RouterError(
            f"{len(complete)} representative prompts answered by every new model; onboarding needs at least "
            f"{MIN_CALIBRATION_PROMPTS} (the router has {calibration.n_prompts})"
        )
    joined = calibration.joined(answers.subset(rows=complete))
    chosen = np.array(sorted(position[answers.prompt_ids[i]] for i in complete))
    data = joined.subset(rows=chosen)
    weights = representative.weights(chosen)
    weights = weights / weights.mean()

    onboarded = copy.copy(router)
    onboarded._cache = cache = SelectionCache(data, load_selector(router.selector))
    rows = np.arange(data.n_prompts)
    existing = set(router.options_)
    added = [o for o in onboarded._make_options(data, rows) if o not in existing and calls(o, answers.models)]
    options = router.options_ + added
    labels = router._labels(cache, rows, options)
    outcomes = option_outcomes(cache, options, router.reference_, router.accept_model_)
    x = router.extractor_.transform(data.texts)
    # existing options that may lend a new one its prior head: those the router uses
    lenders = np.flatnonzero(router.active_)
    lenders = lenders[lenders != router.reference_index_]
    coef, intercept, cost, label_mean = [], [], [], []
    lent: dict[str, str] = {}  # new option -> the twin that lent it its head
    twins = {model: _twins(cache, data, model, router, weights) for model in answers.models}
    shapes = {_shape(router.options_[o]): int(o) for o in lenders}
    for h in range(len(router.options_), len(options)):
        own = labels[:, h]
        twin = _twin_option(options[h], twins, shapes)
        if twin is None:
            prior_coef, prior_intercept = _prior_head(router, labels[:, lenders], lenders, own, weights)
            target = _cautious_mean(own, weights, caution)
        else:
            prior_coef, prior_intercept = router.coef_[:, twin], float(router.intercept_[twin])
            target = _paired_mean(own, labels[:, twin], expit(x @ prior_coef + prior_intercept), weights, caution)
            lent[options[h].label] = router.options_[twin].label
        head_coef, head_intercept = fit_head_near(x, own, weights, prior_coef, prior_intercept, strength=PRIOR_STRENGTH)
        coef.append(head_coef)
        intercept.append(_intercept_for(x @ head_coef, own, weights, head_intercept, target))
        cost.append(_weighted_mean(outcomes.cost[:, h], weights, empty=np.inf))
        label_mean.append(_weighted_mean(own, weights, empty=0.0))
    onboarded.options_ = options
    onboarded.coef_ = np.hstack([router.coef_, np.array(coef).reshape(-1, router.coef_.shape[0]).T])
    onboarded.intercept_ = np.r_[router.intercept_, intercept]
    onboarded.option_cost_ = np.r_[router.option_cost_, cost]
    if router.cost_heads_ is not None:  # the new options' costs by prompt, from the calibration prompts
        new = np.arange(len(router.options_), len(options))
        heads = CostHeads(alpha=router.cost_heads_.alpha)
        heads.fit(x, outcomes.cost[:, new], outcomes.available[:, new], weights)
        onboarded.cost_heads_ = router.cost_heads_.extended(heads)
    onboarded.label_mean_ = np.r_[router.label_mean_, label_mean]
    # The existing options keep their flags: their label means come from the whole training set,
    # the new ones' from a few prompts, too few to retire an option the training set kept.
    fresh = np.ones(len(added), dtype=bool)
    if router.prune_dominated:
        means = np.nan_to_num(onboarded.label_mean_, nan=0.0)
        fresh = ~_dominated(means, onboarded.option_cost_, outcomes.available)[len(router.options_) :]
    onboarded.active_ = np.r_[router.active_, fresh]
    onboarded.calibration_ = joined
    onboarded.changes_ = router.changes_ + [
        {"added": list(answers.models), "prompts": len(chosen), "options": len(added), "twins": lent}
    ]
    onboarded.outcomes_, onboarded._fit_data = outcomes, data
    onboarded.table_ = onboarded._operating_table(data, rows, x, weights)
    return onboarded


def remove(router: BestRouteRouter, models: Collection[str]) -> BestRouteRouter:
    """A copy of ``router`` without every option that samples one of ``models`` (a model retired
    by its vendor); the other options keep their heads. The operating table is re-estimated on
    the representative prompts where the router has them (else it is kept). RouterError for a
    model the router does not call, and for its reference (that needs retraining: the
    reference defines every label)."""
    known = {model for option in router.options_ for stage in option.stages for model in stage.models}
    unknown = sorted(set(models) - known)
    if unknown:
        raise RouterError(f"the router has no model {unknown[0]!r}; it has {', '.join(sorted(known))}")
    if router.reference_.model in models:
        raise RouterError(
            f"{router.reference_.model!r} is the router's reference, which every label compares with: "
            "train a router with another reference (--reference)"
        )
    kept = np.array([o for o, option in enumerate(router.options_) if not calls(option, models)], dtype=int)
    removed = copy.copy(router)
    removed.options_ = [router.options_[o] for o in kept]
    removed.reference_index_ = removed.options_.index(router.reference_)
    removed.coef_, removed.intercept_ = router.coef_[:, kept], router.intercept_[kept]
    removed.option_cost_, removed.active_ = router.option_cost_[kept], router.active_[kept]
    removed.cost_heads_ = None if router.cost_heads_ is None else router.cost_heads_.select(kept)
    removed.label_mean_ = router.label_mean_[kept]
    labels = {option.label for option in removed.options_}
    removed.acceptance_ = [entry for entry in router.acceptance_ if entry["option"] in labels]
    removed.changes_ = router.changes_ + [{"removed": sorted(set(models))}]
    for stale in ("outcomes_", "_fit_data"):  # the fitting data's outcomes: of options it lost
        vars(removed).pop(stale, None)
    if router.calibration_ is not None and router.representative_ is not None:
        data = router.calibration_.subset(models=[m for m in router.calibration_.models if m not in models])
        removed.calibration_ = data
        rows = np.arange(data.n_prompts)
        removed._cache = cache = SelectionCache(data, load_selector(router.selector))
        removed.outcomes_ = option_outcomes(cache, removed.options_, router.reference_, router.accept_model_)
        removed._fit_data = data
        x = router.extractor_.transform(data.texts)
        removed.table_ = removed._operating_table(data, rows, x, router.representative_.weights(rows))
    return removed


def representative_prompts(router: BestRouteRouter, count: int | None = None) -> RoutingDataset:
    """The first ``count`` (default: all) of the router's representative prompts, in their order,
    with the answers of the router's models (what a new model is asked to answer)."""
    calibration, _ = _calibration(router)
    if count is not None and count < MIN_CALIBRATION_PROMPTS:
        raise RouterError(f"onboarding needs at least {MIN_CALIBRATION_PROMPTS} representative prompts, got {count}")
    return calibration.subset(rows=np.arange(min(count or calibration.n_prompts, calibration.n_prompts)))


def _calibration(router: BestRouteRouter) -> tuple[RoutingDataset, RepresentativePrompts]:
    if not isinstance(router, BestRouteRouter):
        raise RouterError(f"only BEST-Route routers take new models; this is {router.name!r}")
    router._check_fitted()
    if router.calibration_ is None or router.representative_ is None:
        raise RouterError(
            "this router was trained without representative prompts (representative_prompts=0, or "
            "before onboarding existed): retrain it to add models"
        )
    return router.calibration_, router.representative_


def _prior_head(
    router: BestRouteRouter, lender_labels: np.ndarray, lenders: np.ndarray, own: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float]:
    """The mean head of the ``NEIGHBOURS`` lenders whose labels are nearest ``own`` (weighted mean
    absolute difference over the prompts both have), weighted by inverse distance."""
    both = ~np.isnan(own)[:, None] & ~np.isnan(lender_labels)
    gap = np.where(both, np.abs(own[:, None] - np.nan_to_num(lender_labels)), 0.0)
    overlap = (weights[:, None] * both).sum(axis=0)
    distance = np.where(overlap > 0, (weights[:, None] * gap).sum(axis=0) / np.maximum(overlap, 1e-12), np.inf)
    nearest = np.argsort(distance, kind="stable")[:NEIGHBOURS]
    nearest = nearest[np.isfinite(distance[nearest])]
    if not nearest.size:  # no lender shares a prompt with it: a head that knows nothing
        return np.zeros(router.coef_.shape[0]), 0.0
    share = 1.0 / (distance[nearest] + DISTANCE_FLOOR)
    share /= share.sum()
    chosen = lenders[nearest]
    return router.coef_[:, chosen] @ share, float(router.intercept_[chosen] @ share)


def _twins(
    cache: SelectionCache, data: RoutingDataset, model: str, router: BestRouteRouter, weights: np.ndarray
) -> list[str]:
    """The ``TWINS`` models of the router's options most like new ``model``: fewest calibration
    prompts where their first answers differ (weighted, over the prompts both answered), then
    nearest in mean cost (a log ratio). On prompts most models get right many tie on answers,
    and a model of a similar price is the likelier stand-in."""
    used = {m for o in np.flatnonzero(router.active_) for m in router.options_[o].models} - {router.reference_.model}
    j = data.model_index(model)
    cost = data.single_sample_cost()
    ranked = []
    for other in sorted(used):
        k = data.model_index(other)
        both = np.flatnonzero(data.available[:, j] & data.available[:, k])
        if not both.size:
            continue
        differ = [not equivalent(cache.answer(i, model, 0), cache.answer(i, other, 0)) for i in both.tolist()]
        share = float(np.average(differ, weights=weights[both]))
        mean_cost = np.maximum([np.nanmean(cost[both, j]), np.nanmean(cost[both, k])], 1e-12)  # (free models)
        gap = abs(float(np.log(mean_cost[0] / mean_cost[1])))
        ranked.append((share, gap, other))
    return [other for _, _, other in sorted(ranked)[:TWINS]]


Shape = tuple[tuple[tuple[str, ...], int, float | None, float, bool], ...]


def _shape(option: Option) -> Shape:
    """What an option does, whatever the order its stages list their models in."""
    return tuple((tuple(sorted(s.models)), s.n, s.accept, s.gate, s.calibrated) for s in option.stages)


def _swapped(option: Option, swap: dict[str, str]) -> Option:
    """``option`` with the models of ``swap`` replaced, in every stage."""
    then = None if option.then is None else _swapped(option.then, swap)
    if option.mix:
        mix = tuple(swap.get(m, m) for m in option.mix)
        return dataclasses.replace(option, model="+".join(mix), mix=mix, then=then)
    return dataclasses.replace(option, model=swap.get(option.model, option.model), then=then)


def _twin_option(option: Option, twins: dict[str, list[str]], shapes: dict[Shape, int]) -> int | None:
    """The index of the lender that is ``option`` with each new model replaced by one of its
    twins (nearest first), or None when the router has no such option or ``option`` samples only
    new models: what those do alone is what their labels measure, and a few prompts on which
    most models are right cannot tell which existing model would do as they do (a twin's head
    can overrate them: 0.96 against 0.86 on the test prompts, docs/results.md)."""
    new = [m for m in option.models if m in twins]
    if not new or len(new) == len(option.models):
        return None

    taken = set(option.models) - set(new)

    def swaps() -> Iterator[dict[str, str]]:
        for chosen in itertools.product(*(twins[m] for m in new)):
            if len(set(chosen)) == len(chosen) and not taken & set(chosen):
                yield dict(zip(new, chosen))

    return next((shapes[key] for swap in swaps() if (key := _shape(_swapped(option, swap))) in shapes), None)


def _cautious_mean(labels: np.ndarray, weights: np.ndarray, caution: float) -> float:
    """The labels' weighted mean less ``caution`` standard errors (of the mean of ``n`` prompts,
    ``n`` the weights' effective number, and the mean moved towards 1/2 by one prompt each way,
    so all-right labels have an error too)."""
    known = ~np.isnan(labels)
    if not known.any():  # nothing to aim at: _intercept_for keeps the head's own intercept
        return float("nan")
    y, w = labels[known], weights[known]
    n = float(w.sum() ** 2 / (w * w).sum())
    mean = float(np.average(y, weights=w))
    moderated = (mean * n + 1) / (n + 2)
    return mean - caution * float(np.sqrt(moderated * (1 - moderated) / n))


def _paired_mean(
    labels: np.ndarray, twin_labels: np.ndarray, twin_predicted: np.ndarray, weights: np.ndarray, caution: float
) -> float:
    """What a new option's mean prediction on the calibration prompts should be, read against its
    twin's, whose head was fitted on the whole training set: the twin head's mean prediction
    there plus the options' mean label difference, less ``caution`` standard errors of that
    difference. An option that does as its twin on every prompt gets its twin's mean."""
    known = ~np.isnan(labels)
    both = known & ~np.isnan(twin_labels)
    base = float(np.average(twin_predicted[known], weights=weights[known]))
    if not both.any():
        return base
    d, w = labels[both] - twin_labels[both], weights[both]
    n = float(w.sum() ** 2 / (w * w).sum())
    mean = float(np.average(d, weights=w))
    spread = float(np.average((d - mean) ** 2, weights=w))
    return base + mean - caution * float(np.sqrt(spread / n))


def _intercept_for(
    logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, intercept: float, target: float
) -> float:
    """The intercept at which a head with ``logits`` (before its intercept) has a weighted mean
    prediction of ``target`` over the prompts with labels (``intercept`` where none has)."""
    known = ~np.isnan(labels)
    if not known.any():
        return intercept
    z, w = logits[known], weights[known]
    target = float(np.clip(target, 1e-4, 1 - 1e-4))
    # every prediction below 1e-8 at the lower end and above 1 - 1e-8 at the upper: the target is between
    low, high = -float(z.max()) - 20.0, -float(z.min()) + 20.0
    return float(brentq(lambda b: float(np.average(expit(z + b), weights=w)) - target, low, high))


def _weighted_mean(values: np.ndarray, weights: np.ndarray, *, empty: float) -> float:
    known = ~np.isnan(values)
    return float(np.average(values[known], weights=weights[known])) if known.any() else empty
