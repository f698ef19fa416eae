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
        masked = np.where(known, cost, np.nan)
        mean = np.nanmean(masked[:, seen], axis=0) if seen.any() else np.zeros(0)
        self.coef_ = np.zeros((x.shape[1], cost.shape[1]))
        self.intercept_ = np.full(cost.shape[1], np.inf)
        self.low_ = np.full(cost.shape[1], np.inf)
        self.high_ = np.full(cost.shape[1], np.inf)
        if seen.any():
            targets = np.where(known[:, seen], cost[:, seen], mean[None, :])
            model = Ridge(alpha=self.alpha).fit(x, targets, sample_weight=weights)
            # one target: scikit-learn gives a vector of coefficients and a scalar intercept
            self.coef_[:, seen] = np.atleast_2d(model.coef_).T
            self.intercept_[seen] = np.atleast_1d(model.intercept_)
            self.low_[seen], self.high_[seen] = np.nanmin(masked[:, seen], axis=0), np.nanmax(masked[:, seen], axis=0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Expected cost of every option on each row of ``x``: (prompts, options). An option
        with no training cost has no coefficients and an infinite intercept, so it is infinite."""
        return np.clip(x @ self.coef_ + self.intercept_, self.low_, self.high_)

    def select(self, options: np.ndarray) -> "CostHeads":
        """The heads of ``options`` (indices) alone, in that order."""
        kept = CostHeads(alpha=self.alpha)
        kept.coef_, kept.intercept_ = self.coef_[:, options], self.intercept_[options]
        kept.low_, kept.high_ = self.low_[options], self.high_[options]
        return kept

    def extended(self, other: "CostHeads") -> "CostHeads":
        """These heads followed by ``other``'s (a router given new options)."""
        joined = CostHeads(alpha=self.alpha)
        joined.coef_ = np.hstack([self.coef_, other.coef_])
        joined.intercept_, joined.low_, joined.high_ = (
            np.r_[getattr(self, name), getattr(other, name)] for name in ("intercept_", "low_", "high_")
        )
        return joined

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"alpha": self.alpha}, {
            "coef": self.coef_,
            "intercept": self.intercept_,
            "low": self.low_,
            "high": self.high_,
        }

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "CostHeads":
        heads = cls(alpha=float(meta["alpha"]))
        heads.coef_, heads.intercept_, heads.low_, heads.high_ = (
            np.asarray(arrays[key], dtype=float) for key in ("coef", "intercept", "low", "high")
        )
        return heads
