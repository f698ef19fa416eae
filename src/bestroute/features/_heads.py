"""Linear sigmoid heads trained on soft labels, shared by BEST-Route, N-label and the reward model."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression


def fit_soft_heads(x: np.ndarray, labels: np.ndarray, *, C: float) -> tuple[np.ndarray, np.ndarray]:
    """One logistic head per column of ``labels`` (soft, in [0, 1]; NaN = no label).

    Soft labels are fitted exactly by cross-entropy: each row with 0 < y < 1 appears once as a
    positive with weight y and once as a negative with weight 1 - y; a row with y = 0 or 1 appears
    once (most labels are, and the solver's work grows with the rows). Returns coef (d, H) and
    intercept (H,).
    Heads are independent, so they are fitted on a thread per core (the solver's array work
    releases the GIL); the result is the same as fitting them one by one.
    """
    coef = np.zeros((x.shape[1], labels.shape[1]))
    intercept = np.zeros(labels.shape[1])

    def fit(h: int) -> None:
        known = ~np.isnan(labels[:, h])
        y = labels[known, h]
        if y.size == 0:
            intercept[h] = -10.0  # never observed: never trusted
            return
        if np.all(y == y[0]) and y[0] in (0.0, 1.0):
            intercept[h] = 10.0 if y[0] == 1.0 else -10.0
            return
        rows = x[known]
        soft = (y > 0.0) & (y < 1.0)
        model = LogisticRegression(C=C, max_iter=2000)
        model.fit(
            np.vstack([rows[~soft], rows[soft], rows[soft]]),
            np.r_[y[~soft], np.ones(soft.sum()), np.zeros(soft.sum())],
            sample_weight=np.r_[np.ones((~soft).sum()), y[soft], 1.0 - y[soft]],
        )
        coef[:, h], intercept[h] = model.coef_[0], model.intercept_[0]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(fit, range(labels.shape[1])))
    return coef, intercept


def apply_heads(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ coef + intercept)))


def fit_head_near(
    x: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    prior_coef: np.ndarray,
    prior_intercept: float,
    *,
    strength: float,
) -> tuple[np.ndarray, float]:
    """One logistic head fitted on few prompts, pulled towards a prior head: it minimises the
    weighted soft cross-entropy of ``labels`` (NaN = no label) plus ``strength`` / 2 times the
    squared distance of (coef, intercept) from (``prior_coef``, ``prior_intercept``). With no
    labels it is the prior."""
    known = ~np.isnan(labels)
    z, y, w = x[known], labels[known], weights[known]
    if not y.size:
        return prior_coef.copy(), float(prior_intercept)
    prior = np.r_[prior_coef, prior_intercept]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logit = z @ theta[:-1] + theta[-1]
        residual = w * (1.0 / (1.0 + np.exp(-logit)) - y)
        gap = theta - prior
        value = float(np.sum(w * (np.logaddexp(0.0, logit) - y * logit)) + strength / 2 * gap @ gap)
        return value, np.r_[z.T @ residual, residual.sum()] + strength * gap

    fitted = minimize(loss, prior, jac=True, method="L-BFGS-B").x
    return fitted[:-1], float(fitted[-1])
