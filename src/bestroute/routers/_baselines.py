"""Baseline routers users compare against. All pick among single responses (n = 1)."""

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from .._exceptions import RouterError
from ..data import RoutingDataset
from ..features import apply_heads, fit_soft_heads
from ..selection import SelectionCache
from ._base import Decisions, Router


def _train_quality(router: Router, train: np.ndarray) -> np.ndarray:
    """(train, O) realised quality of each option, NaN where the model did not answer."""
    return router.outcomes_.quality[train]


@dataclass(kw_only=True, eq=False)
class NLabelRouter(Router):
    """Per-model probability of a good answer; decision maximises it minus a cost penalty.

    Parameters
    ----------
    C : float
        Inverse L2 strength of the logistic heads.
    """

    name: ClassVar[str] = "n-label"
    fitted: ClassVar[tuple[str, ...]] = ("coef_", "intercept_")
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"C": (0.3, 1.0, 3.0)}

    C: float = 1.0

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        self.coef_, self.intercept_ = fit_soft_heads(x[train], _train_quality(self, train), C=self.C)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return apply_heads(x, self.coef_, self.intercept_)


@dataclass(kw_only=True, eq=False)
class NClassRouter(Router):
    """Multinomial classifier of the best model per prompt (ties: the strongest overall);
    decision maximises class probability minus a cost penalty.

    Parameters
    ----------
    C : float
        Inverse L2 strength of the classifier.
    """

    name: ClassVar[str] = "n-class"
    fitted: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "classes_")
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"C": (0.3, 1.0, 3.0)}

    C: float = 1.0

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        quality = np.nan_to_num(_train_quality(self, train), nan=-1.0)
        top = quality == quality.max(axis=1, keepdims=True)
        # Among the models tied at the top, the label is the one strongest overall, so the
        # class is "who answers best" and the cost penalty alone trades quality for cost.
        strength = np.nanmean(_train_quality(self, train), axis=0)
        best = np.where(top, strength[None, :], -np.inf).argmax(axis=1)
        self.classes_ = np.unique(best)
        if len(self.classes_) == 1:
            self.coef_ = np.zeros((x.shape[1], 1))
            self.intercept_ = np.zeros(1)
            return
        model = LogisticRegression(C=self.C, max_iter=2000).fit(x[train], best)
        coef, intercept = model.coef_, model.intercept_
        if len(self.classes_) == 2:  # sklearn keeps one row for two classes
            coef, intercept = np.vstack([-coef, coef]) / 2, np.r_[-intercept, intercept] / 2
        self.coef_, self.intercept_ = coef.T, intercept

    def _scores(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.coef_ + self.intercept_
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        scores = np.zeros((len(x), len(self.options_)))
        scores[:, self.classes_] = probs
        return scores


@dataclass(kw_only=True, eq=False)
class KNNRouter(Router):
    """Similarity-weighted quality of the nearest training prompts (as RouteLLM's sw_ranking).

    Parameters
    ----------
    k : int
        Neighbours consulted.
    temperature : float
        Weights are exp(similarity / temperature).
    """

    name: ClassVar[str] = "knn"
    fitted: ClassVar[tuple[str, ...]] = ("train_x_", "train_quality_")
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"k": (10, 30, 100)}

    k: int = 20
    temperature: float = 0.1

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        self.train_x_ = x[train].astype(np.float32)
        self.train_quality_ = _train_quality(self, train)
        self._restore()

    def _restore(self) -> None:
        self._index = NearestNeighbors(n_neighbors=min(self.k, len(self.train_x_)), metric="cosine").fit(self.train_x_)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        distance, neighbours = self._index.kneighbors(x)
        weight = np.exp((1.0 - distance) / self.temperature)
        quality = self.train_quality_[neighbours]  # (rows, k, O)
        known = ~np.isnan(quality)
        total = (weight[:, :, None] * known).sum(axis=1)
        scores = (weight[:, :, None] * np.nan_to_num(quality)).sum(axis=1) / np.maximum(total, 1e-12)
        return np.where(total > 0, scores, 0.0)


@dataclass(kw_only=True, eq=False)
class MFRouter(Router):
    """Matrix factorisation (as RouteLLM's mf): P[good | prompt, model] = sigmoid(b_m + v_m . W x),
    fitted jointly over all models by L-BFGS on cross-entropy.

    Parameters
    ----------
    dim : int
        Rank of the factorisation.
    l2 : float
        L2 strength on W and the model vectors.
    """

    name: ClassVar[str] = "mf"
    fitted: ClassVar[tuple[str, ...]] = ("w_", "v_", "b_")
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"dim": (8, 32)}

    dim: int = 16
    l2: float = 1e-3

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        xt, target = x[train].astype(float), _train_quality(self, train)
        known = ~np.isnan(target)
        target = np.nan_to_num(target)
        d, m = xt.shape[1], target.shape[1]
        count = known.sum()
        rng = np.random.default_rng(self.seed)
        start = np.concatenate([rng.normal(0, 0.1, d * self.dim), rng.normal(0, 0.1, m * self.dim), np.zeros(m)])

        def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            w = theta[: d * self.dim].reshape(d, self.dim)
            v = theta[d * self.dim : (d + m) * self.dim].reshape(m, self.dim)
            return w, v, theta[(d + m) * self.dim :]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, v, b = unpack(theta)
            z = xt @ w
            logits = z @ v.T + b
            p = 1.0 / (1.0 + np.exp(-logits))
            eps = 1e-9
            ce = -(target * np.log(p + eps) + (1 - target) * np.log(1 - p + eps))
            value = (ce * known).sum() / count + self.l2 * ((w**2).sum() + (v**2).sum())
            g = (p - target) * known / count
            grad_v = g.T @ z + 2 * self.l2 * v
            grad_w = xt.T @ (g @ v) + 2 * self.l2 * w
            return value, np.concatenate([grad_w.ravel(), grad_v.ravel(), g.sum(axis=0)])

        result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 300})
        self.w_, self.v_, self.b_ = unpack(result.x)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-((x @ self.w_) @ self.v_.T + self.b_)))


def _weak_option(router: Router, train: np.ndarray) -> int:
    """The best option on train among those costing at most a fifth of the reference and
    answering every prompt; the cheapest option if none does."""
    quality = _train_quality(router, train)
    complete = ~np.isnan(quality).any(axis=0)
    cheap = complete & (router.option_cost_ <= router.option_cost_[router.reference_index_] / 5)
    cheap[router.reference_index_] = False
    if not cheap.any():
        return int(np.argmin(np.where(complete, router.option_cost_, np.inf)))
    return int(np.argmax(np.where(cheap, np.nanmean(quality, axis=0), -np.inf)))


@dataclass(kw_only=True, eq=False)
class RandomRouter(Router):
    """Sends a prompt to the reference with probability p (the knob), else to a cheap model;
    the draw is a hash of the prompt, so a prompt always goes the same way."""

    name: ClassVar[str] = "random"
    knob: ClassVar[str] = "threshold"
    fitted: ClassVar[tuple[str, ...]] = ("weak_index_",)

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        self.weak_index_ = _weak_option(self, train)
        self.active_[:] = False
        self.active_[[self.weak_index_, self.reference_index_]] = True

    def _scores(self, x: np.ndarray) -> np.ndarray:
        # The draw u in [0, 1) hashes the prompt's feature row: the same prompt, the same draw.
        # The weak option scores u, so it is taken when u >= p.
        scores = np.zeros((len(x), len(self.options_)))
        scores[:, self.weak_index_] = [
            int.from_bytes(hashlib.sha256(row.tobytes() + str(self.seed).encode()).digest()[:8], "big") / 2**64
            for row in np.asarray(x, dtype=np.float32)
        ]
        scores[:, self.reference_index_] = 1.0
        return scores


@dataclass(kw_only=True, eq=False)
class CascadeRouter(Router):
    """Two-model cascade: ask the cheap model first; a verifier scores its answer from the
    prompt and the response; below the threshold the reference is asked too (both paid).

    Parameters
    ----------
    C : float
        Inverse L2 strength of the verifier.
    """

    name: ClassVar[str] = "cascade"
    knob: ClassVar[str] = "threshold"
    fitted: ClassVar[tuple[str, ...]] = ("weak_index_", "coef_", "intercept_")
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"C": (0.3, 1.0, 3.0)}
    servable: ClassVar[bool] = False  # its verifier reads the cheap model's answer; the gateway does not run it

    C: float = 1.0

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        self.weak_index_ = _weak_option(self, train)
        self.active_[:] = False
        self.active_[[self.weak_index_, self.reference_index_]] = True
        weak_j = data.model_index(self.options_[self.weak_index_].model)
        quality = self.outcomes_.quality[train]
        labels = (quality[:, self.weak_index_] >= quality[:, self.reference_index_]).astype(float)
        features = self._pair_features(x[train], [data.responses[i, weak_j, 0] or "" for i in train])
        self.coef_, self.intercept_ = fit_soft_heads(features, labels[:, None], C=self.C)

    def _pair_features(self, prompt_x: np.ndarray, responses: list[str]) -> np.ndarray:
        return np.hstack([prompt_x, self.extractor_.transform(responses)])

    def verify(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """The verifier's probability that the cheap model's responses are good enough."""
        self._check_fitted()
        features = self._pair_features(self.extractor_.transform(list(prompts)), list(responses))
        return apply_heads(features, self.coef_, self.intercept_)[:, 0]

    def _scores(self, x: np.ndarray) -> np.ndarray:
        # Before the cheap model answers, the plan is always: cheap model first.
        scores = np.zeros((len(x), len(self.options_)))
        scores[:, self.weak_index_] = 1.0
        return scores

    def sweep(
        self,
        data: RoutingDataset,
        rows: np.ndarray,
        x: np.ndarray,
        knobs: np.ndarray | None = None,
        *,
        cache: SelectionCache | None = None,
    ) -> list[Decisions]:
        knobs = self.knob_grid() if knobs is None else knobs
        outcomes = self._outcomes_on(data, cache)
        weak, ref = self.weak_index_, self.reference_index_
        weak_j = data.model_index(self.options_[weak].model)
        confidence = apply_heads(
            self._pair_features(x, [data.responses[i, weak_j, 0] or "" for i in rows]), self.coef_, self.intercept_
        )[:, 0]
        flagged = self._out_of_domain(x)
        inside = ~flagged if flagged is not None else True  # the guard sends the others to the reference
        out = []
        for knob in knobs:
            accept = (confidence >= knob) & outcomes.available[rows, weak] & inside
            weak_cost = np.nan_to_num(outcomes.cost[rows, weak])
            out.append(
                Decisions(
                    option=np.where(accept, weak, ref),
                    quality=np.where(accept, outcomes.quality[rows, weak], outcomes.quality[rows, ref]),
                    cost=np.where(accept, weak_cost, weak_cost + outcomes.cost[rows, ref]),
                    escalated=~accept,
                )
            )
        return out


@dataclass(kw_only=True, eq=False)
class OracleRouter(Router):
    """The per-prompt oracle: knows every option's realised quality; the upper bound.
    It cannot route unseen prompts."""

    name: ClassVar[str] = "oracle"
    servable: ClassVar[bool] = False
    upper_bound: ClassVar[bool] = True

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        pass

    def _scores(self, x: np.ndarray) -> np.ndarray:
        raise RouterError("the oracle needs ground-truth quality; it cannot route new prompts")

    def sweep(
        self,
        data: RoutingDataset,
        rows: np.ndarray,
        x: np.ndarray,
        knobs: np.ndarray | None = None,
        *,
        cache: SelectionCache | None = None,
    ) -> list[Decisions]:
        knobs = self.knob_grid() if knobs is None else knobs
        outcomes = self._outcomes_on(data, cache)
        quality, cost = outcomes.quality[rows], outcomes.cost[rows]
        ref_cost = self.option_cost_[self.reference_index_]
        index = np.arange(len(rows))
        out = []
        for knob in knobs:
            # Ties in value go to the cheaper option.
            value = np.where(outcomes.available[rows], quality - knob * cost / ref_cost - 1e-9 * cost, -np.inf)
            choice = value.argmax(axis=1)
            out.append(
                Decisions(
                    option=choice,
                    quality=quality[index, choice],
                    cost=cost[index, choice],
                    escalated=outcomes.accepted[rows][index, choice] == 0,
                )
            )
        return out
