"""Linear sigmoid heads trained on soft labels, shared by BEST-Route, N-label and the reward model."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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
