"""A proxy reward model, as BEST-Route trains one: a small CPU scorer of (prompt, response)."""

import hashlib
from pathlib import Path
from typing import Self

import numpy as np

from .._artifact import read_artifact, write_artifact
from .._exceptions import ArtifactError, RouterError
from ..data import RoutingDataset
from ..features import FeatureExtractor, apply_heads, extractor_from_state, fit_soft_heads, make_extractor
from ..selection import MajorityVote, Selector, SelectorSpec, make_selector

ARTIFACT_KIND = "bestroute-reward-model"
ARTIFACT_VERSION = 2  # 2: cross-fitted


class RewardModel:
    """Pointwise logistic scorer of response quality from prompt and response features.

    Features: the prompt's and the response's embeddings, their elementwise product (how the
    response relates to this prompt), and the response's length. A long response is read as
    its first 128 and last 384 characters (the final answer is usually at the end), which
    bounds the cost of scoring long chat responses. Trained on the sampled responses of the
    training prompts with their quality as soft labels.

    Cross-fitted: the training prompts fall into ``folds`` groups by a hash of their text, and
    one scorer per group is fitted on the other groups' responses. A training prompt is scored
    by the scorer that never saw it, so the best-of-n picks that become a router's training
    labels are as good as picks on new prompts, not optimistic; any other prompt is scored by
    a scorer fitted on every training response.

    Parameters
    ----------
    features : str
        Feature extractor name (see :func:`bestroute.features.make_extractor`).
    C : float
        Inverse L2 strength.
    folds : int
        Cross-fitting folds (>= 2).
    max_responses : int
        At most this many responses, drawn at random, train the model.
    seed : int
        Seed of that draw.
    """

    def __init__(
        self, *, features: str = "auto", C: float = 1.0, folds: int = 2, max_responses: int = 50_000, seed: int = 0
    ) -> None:
        self.features = features
        self.C = C
        self.folds = folds
        self.max_responses = max_responses
        self.seed = seed

    def _features(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        # Prompts repeat (one per sampled response): embed each distinct one once.
        distinct, index = np.unique(np.array(prompts, dtype=object), return_inverse=True)
        p = self.extractor_.transform(list(distinct))[index]
        r = self.extractor_.transform([_clip(text) for text in responses])
        length = np.log1p([len(x) for x in responses])[:, None] / 10
        return np.hstack([p, r, p * r * 10, length])

    def fit(self, data: RoutingDataset, rows: np.ndarray, *, extractor: FeatureExtractor | None = None) -> Self:
        if self.folds < 2:
            raise RouterError(f"folds must be >= 2, got {self.folds}")
        self.extractor_ = extractor or make_extractor(self.features)
        prompts, responses, quality = _pairs(data, rows)
        if not responses:
            raise RouterError("no response texts in the training prompts: the data has no `response` field")
        if len(responses) > self.max_responses:  # a random subset keeps big data quick to fit
            keep = np.sort(np.random.default_rng(self.seed).choice(len(responses), self.max_responses, replace=False))
            prompts, responses, quality = (
                [prompts[t] for t in keep],
                [responses[t] for t in keep],
                [quality[t] for t in keep],
            )
        hashes = _text_hashes(prompts)
        # Head 0 learns from every response (first, so the longest fit starts first on the thread
        # pool); head 1 + f from every response outside fold f.
        learns = np.c_[np.ones(len(hashes), bool), (hashes % self.folds)[:, None] != np.arange(self.folds)[None, :]]
        labels = np.where(learns, np.array(quality)[:, None], np.nan)
        self.coef_, self.intercept_ = fit_soft_heads(self._features(prompts, responses), labels, C=self.C)
        self.train_hashes_ = np.unique(hashes)
        return self

    def score(self, prompts: list[str], responses: list[str], *, chunk: int = 20_000) -> np.ndarray:
        """Predicted quality of each (prompt, response), in chunks that bound the memory."""
        if not hasattr(self, "coef_"):
            raise RouterError("the reward model is not fitted")
        prompts, responses = list(prompts), list(responses)
        # Head 1 + f scores the training prompts of fold f; head 0, fitted on all, any other prompt.
        hashes = _text_hashes(prompts)
        head = np.where(_member(hashes, self.train_hashes_), 1 + hashes % self.folds, 0)
        parts = [
            apply_heads(
                self._features(prompts[at : at + chunk], responses[at : at + chunk]), self.coef_, self.intercept_
            )
            for at in range(0, len(responses), chunk)
        ]
        scores = np.concatenate(parts) if parts else np.zeros((0, self.folds + 1))
        return scores[np.arange(len(head)), head]

    def save(self, path: str | Path) -> None:
        meta, arrays = self.extractor_.state()
        params = {
            "features": self.features,
            "C": self.C,
            "folds": self.folds,
            "max_responses": self.max_responses,
            "seed": self.seed,
        }
        document = {"kind": ARTIFACT_KIND, "version": ARTIFACT_VERSION, "params": params, "features": meta}
        write_artifact(
            path,
            document,
            {
                "features": arrays,
                "state": {"coef": self.coef_, "intercept": self.intercept_, "train_hashes": self.train_hashes_},
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        document, arrays = read_artifact(path, "reward-model")
        if document.get("kind") != ARTIFACT_KIND:
            what = "a router artifact" if "router" in document else "another kind of artifact"
            raise ArtifactError(f"{path}: not a reward-model artifact (it is {what})")
        if document.get("version") != ARTIFACT_VERSION:
            raise ArtifactError(
                f"{path}: reward model of an older bestroute (version {document.get('version')}); "
                "train it again with `bestroute train-reward`"
            )
        model = cls(**document["params"])
        model.extractor_ = extractor_from_state(document["features"], arrays.get("features", {}))
        state = arrays["state"]
        model.coef_, model.intercept_, model.train_hashes_ = state["coef"], state["intercept"], state["train_hashes"]
        return model


def load_selector(spec: SelectorSpec | str) -> Selector:
    """The in-process selector ``spec`` names (a :class:`SelectorSpec` or its one-line form),
    with its reward model loaded from the spec's path for ``reward-model``."""
    spec = SelectorSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.kind == "reward-model" and spec.path is not None:
        return make_selector(spec, scorer=RewardModel.load(spec.path))
    return make_selector(spec)


def _text_hashes(texts: list[str]) -> np.ndarray:
    """A stable 64-bit hash of each text (Python's own hash() changes between processes)."""
    digests = (hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts)
    return np.array([int.from_bytes(d, "little") for d in digests], dtype=np.uint64)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted set by binary search: microseconds for a gateway request's few
    prompts against 10^5 training hashes, where ``np.isin`` sorts the set again (~10 ms)."""
    if not sorted_set.size:
        return np.zeros(len(values), dtype=bool)
    return sorted_set[np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)] == values


def _clip(text: str, head: int = 128, tail: int = 384) -> str:
    return text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]


def _pairs(data: RoutingDataset, rows: np.ndarray) -> tuple[list[str], list[str], list[float]]:
    prompts, responses, quality = [], [], []
    for i in rows:
        for j in range(len(data.models)):
            for k in range(data.quality.shape[2]):
                text = data.responses[i, j, k]
                if text is not None and not np.isnan(data.quality[i, j, k]):
                    prompts.append(data.texts[i])
                    responses.append(text)
                    quality.append(float(data.quality[i, j, k]))
    return prompts, responses, quality


def pairwise_accuracy(
    data: RoutingDataset, rows: np.ndarray, model: RewardModel | None = None, *, max_responses: int = 64, seed: int = 0
) -> dict[str, float]:
    """How often each scorer ranks the better of two responses to the same prompt higher (ties
    count half), over all pairs of different quality among up to ``max_responses`` responses
    per prompt: the reward model, majority vote (the share of the prompt's responses giving the
    same final answer) and random choice (0.5 by construction, reported as measured)."""
    rng = np.random.default_rng(seed)
    wins = {"reward_model": 0.0, "majority_vote": 0.0, "random": 0.0}
    pairs = 0
    for i in rows:
        texts, quality = [], []
        for j in range(len(data.models)):
            for k in range(data.quality.shape[2]):
                if data.responses[i, j, k] is not None and not np.isnan(data.quality[i, j, k]):
                    texts.append(data.responses[i, j, k])
                    quality.append(data.quality[i, j, k])
        if len(texts) > max_responses:
            keep = rng.choice(len(texts), size=max_responses, replace=False)
            texts, quality = [texts[t] for t in keep], [quality[t] for t in keep]
        q = np.array(quality)
        if len(q) < 2 or q.min() == q.max():
            continue
        agreement, _ = MajorityVote().judge(data.texts[i], list(texts), q)
        scores = {
            "majority_vote": agreement.mean(axis=1),
            "random": rng.random(len(texts)),
        }
        if model is not None:
            scores["reward_model"] = model.score([data.texts[i]] * len(texts), texts)
        better = q[:, None] > q[None, :]
        count = int(better.sum())
        pairs += count
        for name, s in scores.items():
            wins[name] += float(
                ((s[:, None] > s[None, :]) & better).sum() + 0.5 * ((s[:, None] == s[None, :]) & better).sum()
            )
    if not pairs:
        raise RouterError("no prompt has two responses of different quality")
    result = {name: wins[name] / pairs for name in wins if name != "reward_model" or model is not None}
    return result | {"pairs": pairs}
