"""What each option is expected to cost on a prompt: one ridge regression per option on the
prompt's features, fitted on the training prompts' realised costs (escalations included)."""

from typing import Any, Self

import numpy as np
from sklearn.linear_model import Ridge

from .._exceptions import FeatureError


class CostHeads:
    """Per-option expected cost of a prompt, in USD.

    An escalating option's cost depends on the prompt far more than its mean says: a pair of
    cheap models that agrees on nine arithmetic prompts in ten agrees on fewer than half of the
    code prompts, and each disagreement pays the reference too. One ridge regression per option
    (all solved at once) predicts the cost from the prompt's features; a prediction is clipped
    to the range of that option's training costs. An option with no training cost is expected
    to cost infinitely much (it is never the cheapest).

    Parameters
    ----------
    alpha : float
        L2 strength of the regressions (on the features' own scale).
    """

    def __init__(self, *, alpha: float = 1.0) -> None:
        if not np.isfinite(alpha) or alpha < 0:
            raise FeatureError(f"the cost heads' alpha must be a finite number >= 0, got {alpha}")
        self.alpha = alpha

    def fit(self, x: np.ndarray, cost: np.ndarray, available: np.ndarray, weights: np.ndarray | None = None) -> Self:
        """Fit on features ``x`` (prompts, d), realised ``cost`` (prompts, options) where
        ``available``; a prompt an option did not answer counts as that option's mean cost."""
        known = available & np.isfinite(cost)
        seen = known.any(axis=0)
        self.coef_ = np.zeros((x.shape[1], cost.shape[1]))
        self.intercept_, self.low_, self.high_ = (np.full(cost.shape[1], np.inf) for _ in range(3))
        if seen.any():
            paid = np.where(known[:, seen], cost[:, seen], np.nan)
            targets = np.where(known[:, seen], paid, np.nanmean(paid, axis=0)[None, :])
            model = Ridge(alpha=self.alpha).fit(x, targets, sample_weight=weights)
            # one target: scikit-learn gives a vector of coefficients and a scalar intercept
            self.coef_[:, seen] = np.atleast_2d(model.coef_).T
            self.intercept_[seen] = np.atleast_1d(model.intercept_)
            self.low_[seen], self.high_[seen] = np.nanmin(paid, axis=0), np.nanmax(paid, axis=0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Expected cost of every option on each row of ``x``: (prompts, options). An option
        with no training cost has no coefficients and an infinite intercept, so it is infinite."""
        return np.clip(x @ self.coef_ + self.intercept_, self.low_, self.high_)

    def select(self, options: np.ndarray) -> "CostHeads":
        """The heads of ``options`` (indices) alone, in that order."""
        return self._of(self.alpha, *(array[..., options] for array in self._arrays()))

    def extended(self, other: "CostHeads") -> "CostHeads":
        """These heads followed by ``other``'s (a router given new options)."""
        return self._of(self.alpha, *(np.concatenate(pair, axis=-1) for pair in zip(self._arrays(), other._arrays())))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"alpha": self.alpha}, dict(zip(_STATE_KEYS, self._arrays(), strict=True))

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "CostHeads":
        return cls._of(float(meta["alpha"]), *(np.asarray(arrays[key], dtype=float) for key in _STATE_KEYS))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The fitted arrays, each with one entry (a column of ``coef_``) per option, last axis."""
        return self.coef_, self.intercept_, self.low_, self.high_

    @classmethod
    def _of(
        cls, alpha: float, coef: np.ndarray, intercept: np.ndarray, low: np.ndarray, high: np.ndarray
    ) -> "CostHeads":
        heads = cls(alpha=alpha)
        heads.coef_, heads.intercept_, heads.low_, heads.high_ = coef, intercept, low, high
        return heads


_STATE_KEYS = ("coef", "intercept", "low", "high")  # the artifact's names of _arrays()
