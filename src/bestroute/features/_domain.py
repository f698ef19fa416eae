"""The router's domain: how far a prompt's features lie from the prompts it was trained on, and
the distance beyond which it is out of domain (calibrated on validation prompts)."""

from typing import Any, Self

import numpy as np

from .._exceptions import FeatureError

DOMAIN_QUANTILE = 0.995  # the default: about one in-domain prompt in 200 is flagged


class DomainGuard:
    """Out-of-domain test in a whitened feature space.

    The training prompts' features are centred and whitened (their covariance, in a random
    ``max_dims``-dimensional projection of larger feature spaces; a direction with no variance
    counts as one with a millionth of the largest), so a direction in which the training prompts hardly vary counts
    as much as one in which they vary a lot: prompts that share a long template, as benchmark
    prompts do, differ from others mostly in such directions. A prompt's distance is its mean
    Euclidean distance to its ``k`` nearest training prompts there. The threshold is the
    ``quantile`` of the validation prompts' distances (without validation, of the training
    prompts' distances to their other neighbours), so about ``1 - quantile`` of in-domain prompts
    are flagged, whatever the feature space's scale.

    Parameters
    ----------
    quantile : float
        Share of in-domain (validation) prompts the threshold keeps inside, in (0, 1].
    k : int
        Nearest training prompts a distance averages over.
    max_rows : int
        Training prompts kept (a seeded sample of larger sets): the artifact's size and the
        serving cost (one matrix-vector product) grow with them.
    max_dims : int
        Dimensions whitened (features with more are projected first).
    seed : int
        Seed of that sample.
    """

    def __init__(
        self, *, quantile: float = DOMAIN_QUANTILE, k: int = 1, max_rows: int = 1024, max_dims: int = 384, seed: int = 0
    ) -> None:
        if not 0 < quantile <= 1:
            raise FeatureError(f"the domain quantile must be in (0, 1], got {quantile}")
        if k < 1 or max_rows < 1 or max_dims < 1:
            raise FeatureError("the domain guard needs k, max_rows and max_dims >= 1")
        self.quantile, self.k, self.max_rows, self.max_dims, self.seed = quantile, k, max_rows, max_dims, seed

    def fit(self, train: np.ndarray, val: np.ndarray | None = None) -> Self:
        """Whiten (a sample of) the training rows and set ``threshold_`` from ``val``'s distances."""
        if len(train) < 2:
            raise FeatureError("the domain guard needs at least two training prompts")
        rows = np.asarray(train, dtype=np.float64)
        if len(rows) > self.max_rows:
            rows = rows[np.sort(np.random.default_rng(self.seed).choice(len(rows), self.max_rows, replace=False))]
        mean = rows.mean(axis=0)
        centred = rows - mean
        if centred.shape[1] > self.max_dims:
            # a seeded random orthonormal projection: unlike the training prompts' principal
            # directions, it keeps what a prompt has outside their span, where the odd ones differ
            gaussian = np.random.default_rng(self.seed).normal(size=(centred.shape[1], self.max_dims))
            directions = np.linalg.qr(gaussian)[0]
        else:
            directions = np.eye(centred.shape[1])
        projected = centred @ directions
        covariance = projected.T @ projected / len(projected)
        variances, axes = np.linalg.eigh(covariance)
        if variances.max() <= 0:  # every training prompt alike: distances in the features' own units
            scale = np.ones_like(variances)
        else:  # a direction with no variance at all counts as one with a millionth of the largest
            scale = 1.0 / np.sqrt(np.maximum(variances, variances.max() * 1e-6))
        # z = (x - mean) @ whitening; float32, as the artifact stores it, so a loaded guard decides as this one
        self.mean_ = mean.astype(np.float32)
        self.whitening_ = (directions @ axes * scale).astype(np.float32)
        self._set_rows(self._whiten(np.asarray(rows, dtype=np.float32)))
        if val is not None and len(val):
            distances = self.distance(val)
        else:  # each training prompt against the others: leave itself out
            distances = self._distance(self.rows_, skip_self=True)
        self.threshold_ = float(np.quantile(distances, self.quantile))
        return self

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Each row's distance to the training prompts (whitened units)."""
        return self._distance(self._whiten(np.asarray(x, dtype=np.float32)), skip_self=False)

    def out_of_domain(self, x: np.ndarray) -> np.ndarray:
        """Whether each row lies beyond the threshold."""
        return self.distance(x) > self.threshold_

    def _set_rows(self, rows: np.ndarray) -> None:
        self.rows_ = rows
        self._squared_norms = (rows * rows).sum(axis=1)  # made once: a prompt's distance needs them all

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - self.mean_) @ self.whitening_, dtype=np.float32)

    def _distance(self, z: np.ndarray, *, skip_self: bool) -> np.ndarray:
        squared = (z * z).sum(axis=1)[:, None] + self._squared_norms[None, :] - 2 * z @ self.rows_.T
        k = min(self.k, self.rows_.shape[0] - skip_self)
        if k == 1 and not skip_self:  # the nearest alone (the default): a minimum, the same number
            return np.asarray(np.sqrt(np.maximum(squared.min(axis=1), 0.0)), dtype=float)
        # the k smallest (and, leaving a row out, the one before them: itself, at 0)
        nearest = np.partition(squared, k - 1 + skip_self, axis=1)[:, : k + skip_self]
        if skip_self:
            nearest = np.sort(nearest, axis=1)[:, 1:]
        return np.asarray(np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1), dtype=float)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"quantile": self.quantile, "k": self.k, "max_rows": self.max_rows, "max_dims": self.max_dims}
        arrays = {"mean": self.mean_, "whitening": self.whitening_, "rows": self.rows_}
        return meta | {"seed": self.seed, "threshold": self.threshold_}, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "DomainGuard":
        guard = cls(
            quantile=meta["quantile"],
            k=meta["k"],
            max_rows=meta["max_rows"],
            max_dims=meta["max_dims"],
            seed=meta["seed"],
        )
        guard.mean_, guard.whitening_ = (np.asarray(arrays[k], dtype=np.float32) for k in ("mean", "whitening"))
        guard._set_rows(np.asarray(arrays["rows"], dtype=np.float32))
        guard.threshold_ = float(meta["threshold"])
        return guard
