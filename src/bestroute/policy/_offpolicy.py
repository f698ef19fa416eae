"""Off-policy estimators: what a candidate policy's mean reward would have been on logged traffic
that another (exploring) policy chose, from each row's logged propensity.

Inverse propensity (IPS) weighs the rows where the candidate would have taken the logged
option by 1 / propensity; self-normalised IPS (SNIPS) divides by the sum of those weights
instead of the row count, trading a little bias for much less variance; doubly robust (DR) adds
a direct model's prediction for the candidate's option and corrects it by the weighted error of
the prediction for the logged one, unbiased if either the propensities or the model are right.
Intervals are percentile bootstraps over rows."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    lower: float
    upper: float

    def covers(self, truth: float) -> bool:
        return self.lower <= truth <= self.upper


@dataclass(frozen=True)
class OffPolicyEstimates:
    """The three estimates of one reward, with the rows they rest on: ``matched`` rows took the
    candidate's option; ``effective_size`` is (sum w)^2 / sum w^2 of their weights."""

    ips: Estimate
    snips: Estimate
    dr: Estimate | None
    rows: int
    matched: int
    effective_size: float


def off_policy_estimates(
    rewards: np.ndarray,
    propensities: np.ndarray,
    matched: np.ndarray,
    *,
    predicted_logged: np.ndarray | None = None,
    predicted_candidate: np.ndarray | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> OffPolicyEstimates:
    """Estimates of the candidate's mean reward. ``rewards`` and ``propensities`` are the logged
    option's, ``matched`` whether the candidate takes that option on the row; the direct model's
    predictions for the logged and the candidate's option make the DR estimate."""
    rewards, propensities = np.asarray(rewards, dtype=float), np.asarray(propensities, dtype=float)
    weights = np.asarray(matched, dtype=float) / propensities
    terms = {"ips": weights * rewards}
    if predicted_logged is not None and predicted_candidate is not None:
        terms["dr"] = np.asarray(predicted_candidate, float) + weights * (rewards - np.asarray(predicted_logged, float))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rewards), size=(resamples, len(rewards)))
    tail = (1 - confidence) / 2

    def interval(point: float, resampled: np.ndarray) -> Estimate:
        finite = resampled[np.isfinite(resampled)]
        lower, upper = np.quantile(finite, [tail, 1 - tail]) if finite.size else (np.nan, np.nan)
        return Estimate(float(point), float(lower), float(upper))

    def snips(rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights[rows] * rewards[rows]).sum(axis=-1) / weights[rows].sum(axis=-1)

    estimates = {name: interval(float(t.mean()), t[draws].mean(axis=1)) for name, t in terms.items()}
    total = weights.sum()
    return OffPolicyEstimates(
        ips=estimates["ips"],
        snips=interval(float(snips(np.arange(len(rewards)))) if total else float("nan"), snips(draws)),
        dr=estimates.get("dr"),
        rows=len(rewards),
        matched=int(np.asarray(matched).sum()),
        effective_size=float(total**2 / (weights**2).sum()) if total else 0.0,
    )
