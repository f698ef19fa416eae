"""The representative prompts of a router's training set: the few prompts a new model answers so
that the router can route to it (``bestroute onboard``), each standing for the training prompts
nearest to it."""

from typing import Any, Self

import numpy as np
from sklearn.cluster import KMeans

from .._exceptions import FeatureError


class RepresentativePrompts:
    """Medoids of a k-means clustering of the training prompts' features, in an order whose every
    prefix spreads over the feature space, and the share of training prompts each stands for.

    k-means (``n_prompts`` clusters) covers every region of the training prompts in proportion
    to how many there are; each cluster's medoid (the training prompt nearest its centre) is its
    representative, so what a model does on the representatives, weighted by their clusters'
    sizes, estimates what it does on the training prompts. The order is farthest-first from the
    largest cluster's medoid: each next prompt is the one farthest from those before it, so a new
    model that answers only the first K of them is still measured across the whole space.

    Parameters
    ----------
    n_prompts : int
        Representatives (clusters); fewer when there are fewer training prompts.
    seed : int
        Seed of the clustering.
    """

    def __init__(self, *, n_prompts: int = 100, seed: int = 0) -> None:
        if n_prompts < 1:
            raise FeatureError(f"the representative prompts must be at least one, got {n_prompts}")
        self.n_prompts, self.seed = n_prompts, seed

    def fit(self, x: np.ndarray) -> Self:
        """Choose among the rows of ``x``: ``rows_`` (positions in x, in order), ``sizes_`` (the
        rows each one's cluster holds) and ``points_`` (their features)."""
        if len(x) < 1:
            raise FeatureError("representative prompts need at least one training prompt")
        x = np.asarray(x, dtype=np.float64)
        k = min(self.n_prompts, len(np.unique(x, axis=0)))
        clusters = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(x)
        medoids, sizes = [], []
        for c in range(k):
            members = np.flatnonzero(clusters.labels_ == c)
            if members.size:
                gap = ((x[members] - clusters.cluster_centers_[c]) ** 2).sum(axis=1)
                medoids.append(int(members[np.argmin(gap)]))
                sizes.append(float(members.size))
        points = x[medoids]
        order = [int(np.argmax(sizes))]
        nearest = ((points - points[order[0]]) ** 2).sum(axis=1)
        while len(order) < len(medoids):
            following = int(np.argmax(nearest))
            order.append(following)
            nearest = np.minimum(nearest, ((points - points[following]) ** 2).sum(axis=1))
        self.rows_ = np.array(medoids, dtype=int)[order]
        self.sizes_ = np.array(sizes)[order]
        self.points_ = points[order].astype(np.float32)
        return self

    def weights(self, chosen: np.ndarray) -> np.ndarray:
        """For the representatives at positions ``chosen`` (a subset, as a new model answered
        them), the training prompts each stands for: its own cluster's and those of the clusters
        whose representative was not answered and is nearest to it. They sum to the training set."""
        chosen = np.asarray(chosen, dtype=int)
        if chosen.size == 0:
            raise FeatureError("no representative prompt was answered")
        gap = ((self.points_[:, None, :] - self.points_[None, chosen, :]) ** 2).sum(axis=2)
        return np.bincount(gap.argmin(axis=1), weights=self.sizes_, minlength=chosen.size)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n_prompts": self.n_prompts, "seed": self.seed}, {
            "rows": self.rows_,
            "sizes": self.sizes_,
            "points": self.points_,
        }

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "RepresentativePrompts":
        prompts = cls(n_prompts=int(meta["n_prompts"]), seed=int(meta["seed"]))
        prompts.rows_ = np.asarray(arrays["rows"], dtype=int)
        prompts.sizes_ = np.asarray(arrays["sizes"], dtype=float)
        prompts.points_ = np.asarray(arrays["points"], dtype=np.float32)
        return prompts
