"""Decision rules: per-option scores and one knob in, one option per prompt out."""

import numpy as np


def cheapest_above(
    scores: np.ndarray, threshold: float, option_cost: np.ndarray, fallback: int, available: np.ndarray | None = None
) -> np.ndarray:
    """BEST-Route's rule: the cheapest option whose score is >= ``threshold``, else ``fallback``."""
    ok = scores >= threshold
    if available is not None:
        ok &= available
    ranked = np.where(ok, option_cost[None, :], np.inf)
    choice = ranked.argmin(axis=1)
    return np.where(np.isfinite(ranked[np.arange(len(choice)), choice]), choice, fallback)


def best_value(
    scores: np.ndarray,
    penalty: float,
    option_cost: np.ndarray,
    reference_cost: float,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """The option maximising predicted quality minus ``penalty`` x cost / reference cost."""
    value = scores - penalty * (option_cost / reference_cost)[None, :]
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
    Plain Python over one prompt's options: the serving path, where each array operation costs
    more than the whole sort.
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


THRESHOLD_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.geomspace(1e-4, 5e-3, 20)]))
PENALTY_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 10.0, 120)])
