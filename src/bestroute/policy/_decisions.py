"""Decision rules: per-option scores and one knob in, one option per prompt out."""

import math
from dataclasses import dataclass

import numpy as np

from .._exceptions import RouterError


def cheapest_above(
    scores: np.ndarray, threshold: float, option_cost: np.ndarray, fallback: int, available: np.ndarray | None = None
) -> np.ndarray:
    """BEST-Route's rule: the cheapest option whose score is >= ``threshold``, else ``fallback``.
    ``option_cost``: one cost per option, or one per prompt and option (the same shape as ``scores``)."""
    ok = scores >= threshold
    if available is not None:
        ok &= available
    ranked = np.where(ok, np.broadcast_to(option_cost, scores.shape), np.inf)
    choice = ranked.argmin(axis=1)
    return np.where(np.isfinite(ranked[np.arange(len(choice)), choice]), choice, fallback)


def best_value(
    scores: np.ndarray,
    penalty: float,
    option_cost: np.ndarray,
    reference: int,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """The option maximising predicted quality minus ``penalty`` x cost / the reference's cost
    (``option_cost``: per option, or per prompt and option)."""
    cost = np.broadcast_to(option_cost, scores.shape)
    value = scores - penalty * (cost / cost[:, reference : reference + 1])
    if available is not None:
        value = np.where(available, value, -np.inf)
    return value.argmax(axis=1)


def fallback_order(
    scores: np.ndarray,
    knob: float,
    *,
    threshold_rule: bool,
    option_cost: np.ndarray,
    reference: int,
    available: np.ndarray,
) -> list[int]:
    """All available options of one prompt, best first; the first is the decision.

    Threshold rule: the options scoring >= the knob from cheapest up (``cheapest_above``'s
    choice first), then the reference, then the rest by score. Cost-penalty rule: all by
    penalised value (``best_value``'s choice first). Ties keep index order, as argmin/argmax do.
    ``option_cost``: the options' costs on this prompt. Plain Python over one prompt's options:
    the serving path, where each array operation costs more than the whole sort.
    """
    values, costs = scores.tolist(), option_cost.tolist()
    candidates = [o for o, ok in enumerate(available.tolist()) if ok]
    if threshold_rule:

        def rank(o: int) -> tuple[int, float]:
            if values[o] >= knob:
                return 0, costs[o]
            return (1, 0.0) if o == reference else (2, -values[o])
    else:
        reference_cost = costs[reference]

        def rank(o: int) -> tuple[int, float]:
            return 0, -(values[o] - knob * costs[o] / reference_cost)

    return sorted(candidates, key=rank)


@dataclass(frozen=True)
class DecisionRule:
    """A router's rule with what it needs: ``kind`` "threshold" (:func:`cheapest_above`) or
    "cost_penalty" (:func:`best_value`), each option's mean cost, the fallback option and the
    options the router keeps. :meth:`decide` decides for many prompts at once (offline);
    :meth:`order` ranks one prompt's options, its first being :meth:`decide`'s choice (serving).
    Both take the options' expected costs on the prompts where the router predicts them (else
    the mean costs count)."""

    kind: str
    option_cost: np.ndarray
    reference: int
    active: np.ndarray

    def check(self, knob: float) -> float:
        """``knob``, if this rule can use it; else a RouterError saying why."""
        if not math.isfinite(knob) or knob < 0:
            raise RouterError(f"the routing knob must be a finite non-negative number, got {knob}")
        if self.kind == "threshold" and knob > 1:
            raise RouterError(f"a threshold must be between 0 and 1, got {knob:g}")
        return knob

    def decide(
        self, scores: np.ndarray, knob: float, available: np.ndarray | None = None, cost: np.ndarray | None = None
    ) -> np.ndarray:
        """One option index per row of ``scores``; ``cost``: the options' costs on each row."""
        usable = self.active[None, :] if available is None else available & self.active[None, :]
        cost = self.option_cost if cost is None else cost
        if self.kind == "threshold":
            return cheapest_above(scores, knob, cost, self.reference, usable)
        return best_value(scores, knob, cost, self.reference, usable)

    def order(
        self, scores: np.ndarray, knob: float, available: np.ndarray, cost: np.ndarray | None = None
    ) -> list[int]:
        """One prompt's available options, best first (:func:`fallback_order`); ``cost``: the
        options' costs on this prompt."""
        return fallback_order(
            scores,
            knob,
            threshold_rule=self.kind == "threshold",
            option_cost=self.option_cost if cost is None else cost,
            reference=self.reference,
            available=available & self.active,
        )


THRESHOLD_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.geomspace(1e-4, 5e-3, 20)]))
PENALTY_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 10.0, 120)])
