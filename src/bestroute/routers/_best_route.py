"""The BEST-Route router: one sigmoid head per (model, n) option."""

from typing import Any, ClassVar

import numpy as np

from ..data import RoutingDataset
from ._base import Router
from ._heads import apply_heads, fit_soft_heads
from ._selection import make_selector, soft_labels


class BestRouteRouter(Router):
    """Head (m, n) predicts P[quality of best-of-n from m >= quality of the reference].

    Decision: the cheapest option whose prediction is >= the threshold, else the reference.

    Parameters
    ----------
    C : float
        Inverse L2 strength of the logistic heads.
    prune_dominated : bool
        Drop options that another option beats on training data at no more cost; fewer
        heads means fewer chances for a noisy head to win the cheapest-above-threshold race.
    max_subsets : int
        Subsets of n samples per prompt used to estimate a soft label (all when fewer).
    **kwargs
        See :class:`Router`.
    """

    name: ClassVar[str] = "best-route"
    knob: ClassVar[str] = "threshold"
    uses_samples: ClassVar[bool] = True

    def __init__(self, *, C: float = 1.0, prune_dominated: bool = True, max_subsets: int = 64,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.C = C
        self.prune_dominated = prune_dominated
        self.max_subsets = max_subsets

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        labels = soft_labels(data, train, self.options_, self.reference_, make_selector(self.selector),
                             max_subsets=self.max_subsets, seed=self.seed)
        labels[:, self.reference_index_] = 1.0  # the reference is always as good as itself
        self.label_mean_ = np.nan_to_num(np.nanmean(labels, axis=0), nan=0.0)
        if self.prune_dominated:
            self.active_ = ~_dominated(self.label_mean_, self.option_cost_, self.outcomes_.available[train])
            self.active_[self.reference_index_] = True
        self.coef_, self.intercept_ = fit_soft_heads(x[train], np.where(self.active_, labels, np.nan), C=self.C)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        scores = apply_heads(x, self.coef_, self.intercept_)
        scores[:, self.reference_index_] = 1.0
        return scores

    def _params(self) -> dict[str, Any]:
        return super()._params() | {"C": self.C, "prune_dominated": self.prune_dominated,
                                    "max_subsets": self.max_subsets}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"coef": self.coef_, "intercept": self.intercept_}

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]


def _dominated(label_mean: np.ndarray, cost: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Options for which another option, answering wherever this one does, is no more costly
    and has a higher mean label."""
    covers = (available[:, :, None] | ~available[:, None, :]).all(axis=0)  # covers[a, b]: a covers b
    better = (cost[:, None] <= cost[None, :]) & (label_mean[:, None] > label_mean[None, :])
    return (covers & better).any(axis=0)
