"""Confidence from every signal at once: a small calibrated model over a stage's samples that
predicts whether the pick is as good as the reference's answer.

The selector picks (consensus, majority, a reward model); what decides whether a *calibrated*
stage keeps its pick is :class:`AcceptanceModel`, a logistic regression over the stage's
:class:`Signals`: how much the samples agree with the pick and how split the rest is, empty or
unreadable answers, the reward model's score and margin where there is one, which models' answers
agree with the pick, the kind and length of the answer, the prompt's length. Agreement is always
measured by consensus over the answers read by type, whatever the selector, so a reward model's
pick and the samples' agreement both count. It is fitted on training prompts (label: the pick is
as good as the reference's answer) and saved in the router's artifact; the executor applies the
same object offline and in the gateway.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from sklearn.linear_model import LogisticRegression

from .._exceptions import RouterError
from ._answers import Answer

# The stage-level signals, in the order of ``Signals.values``.
SIGNAL_NAMES = (
    "support",  # mean agreement of the samples with the pick
    "runner_up",  # the best support among the samples that disagree with the pick
    "clusters",  # groups of agreeing answers, per sample
    "empty",  # share of samples with no readable answer
    "score",  # the selector's score of the pick (0 without scores)
    "score_margin",  # the pick's score minus the best other sample's
    "log_samples",
    "models",  # distinct models in the stage
    "number",  # the pick's answer kind: a number, a literal, free text (else another kind)
    "literal",
    "text",
    "log_answer_chars",  # short answers agree by chance more often
    "log_prompt_chars",
)


@dataclass(frozen=True)
class Signals:
    """What a stage's samples say about its pick: the ``values`` named by :data:`SIGNAL_NAMES`,
    the stage's ``models`` and those of them with a sample that agrees with the pick."""

    values: tuple[float, ...]
    models: tuple[str, ...]
    agreeing: tuple[str, ...]


def stage_signals(
    agreement: np.ndarray,
    scores: np.ndarray | None,
    picked: int,
    models: Sequence[str],
    answer: Answer,
    prompt_chars: int,
) -> Signals:
    """The signals of a stage whose samples (of ``models``, one entry per sample) have the
    consensus ``agreement`` matrix and, for a scoring selector, ``scores``; ``answer`` is the
    pick's answer."""
    k = len(models)
    support = agreement.mean(axis=1)
    agrees = agreement[picked] >= 0.5
    runner_up = float(support[~agrees].max()) if (~agrees).any() else 0.0
    clusters, seen = 0, np.zeros(k, dtype=bool)
    for s in range(k):  # greedy: each unseen sample starts a group with all it agrees with
        if not seen[s]:
            clusters += 1
            seen |= agreement[s] >= 0.5
            seen[s] = True
    score = margin = 0.0
    if scores is not None and scores.size and np.isfinite(scores).all():
        score = float(scores[picked])
        others = np.delete(scores, picked)
        margin = score - float(others.max()) if others.size else 0.0
    values = (
        float(support[picked]),
        runner_up,
        clusters / k,
        float((agreement.diagonal() == 0).mean()),
        score,
        margin,
        math.log(k),
        float(len(set(models))),
        float(answer.kind == "number"),
        float(answer.kind == "literal"),
        float(answer.kind == "text"),
        math.log1p(len(answer.key)),
        math.log1p(prompt_chars),
    )
    agreeing = tuple(sorted({m for m, a in zip(models, agrees, strict=True) if a}))
    return Signals(values, tuple(sorted(set(models))), agreeing)


@dataclass(kw_only=True, eq=False)
class AcceptanceModel:
    """P[a stage's pick is as good as the reference's answer], from the stage's signals.

    Parameters
    ----------
    C : float
        Inverse L2 strength of the logistic regression.

    Attributes
    ----------
    models_ : list of str
        The models whose presence in a stage, and agreement with its pick, are features.
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    """

    C: float = 1.0

    def fit(self, signals: Sequence[Signals], labels: np.ndarray) -> Self:
        """Fit on stages' ``signals`` and whether each one's pick was as good as the reference's
        answer (``labels``, 0 or 1)."""
        labels = np.asarray(labels, dtype=float)
        if len(signals) != len(labels) or not len(labels):
            raise RouterError("the acceptance model needs one label per stage, and at least one stage")
        self.models_ = sorted({m for s in signals for m in s.models})
        if labels.min() == labels.max():  # one class: a constant probability says all there is
            self.coef_ = np.zeros(len(SIGNAL_NAMES) + 2 * len(self.models_))
            self.intercept_ = float(np.log((labels[0] + 1e-3) / (1 - labels[0] + 1e-3)))
            return self
        x = self._design(signals)
        fitted = LogisticRegression(C=self.C, max_iter=2000).fit(x, labels)
        self.coef_, self.intercept_ = fitted.coef_[0], float(fitted.intercept_[0])
        return self

    def probability(self, signals: Sequence[Signals]) -> np.ndarray:
        """P[as good as the reference] of each stage."""
        logits = self._design(signals) @ self.coef_ + self.intercept_
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))

    def __call__(self, signals: Signals) -> float:
        """One stage's probability: what a calibrated stage's threshold is compared with."""
        return float(self.probability([signals])[0])

    def _design(self, signals: Sequence[Signals]) -> np.ndarray:
        index = {m: p for p, m in enumerate(self.models_)}
        width = len(index)
        x = np.zeros((len(signals), len(SIGNAL_NAMES) + 2 * width))
        for row, s in enumerate(signals):
            x[row, : len(SIGNAL_NAMES)] = s.values
            for m in s.models:  # a model unseen in fitting adds nothing
                if m in index:
                    x[row, len(SIGNAL_NAMES) + index[m]] = 1.0
            for m in s.agreeing:
                if m in index:
                    x[row, len(SIGNAL_NAMES) + width + index[m]] = 1.0
        return x

    def weights(self) -> dict[str, float]:
        """The logistic weight of each signal, and of each model's agreeing with the pick
        ("agrees: MODEL"): what ``bestroute explain`` shows."""
        named = dict(zip(SIGNAL_NAMES, self.coef_[: len(SIGNAL_NAMES)].tolist(), strict=True))
        agreeing = self.coef_[len(SIGNAL_NAMES) + len(self.models_) :].tolist()
        return named | {f"agrees: {m}": w for m, w in zip(self.models_, agreeing, strict=True)}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the artifact keeps: the hyperparameter and models as JSON, the weights as an array."""
        return {"C": self.C, "models": self.models_, "intercept": self.intercept_}, {"coef": self.coef_}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "AcceptanceModel":
        model = cls(C=float(meta["C"]))
        model.models_, model.intercept_ = [str(m) for m in meta["models"]], float(meta["intercept"])
        model.coef_ = np.asarray(arrays["coef"], dtype=float)
        if model.coef_.shape != (len(SIGNAL_NAMES) + 2 * len(model.models_),):
            raise RouterError("the artifact's acceptance model does not match this version's signals")
        return model
