"""The BEST-Route router: one sigmoid head per (model, n) option, and its escalating variant."""

from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar

import numpy as np

from ..data import RoutingDataset
from ..features import RepresentativePrompts, apply_heads, fit_soft_heads
from ..policy import THRESHOLD_GRID
from ..selection import AcceptanceModel, Option, SelectionCache, acceptance_examples, soft_labels
from ._base import Router, column_means


@dataclass(kw_only=True, eq=False)
class BestRouteRouter(Router):
    """Head (m, n) predicts P[quality of best-of-n from m >= quality of the reference].

    Decision: the cheapest option whose prediction is >= the threshold, else the reference.

    Parameters
    ----------
    C : float
        Inverse L2 strength of the logistic heads.
    prune_dominated : bool
        Drop options that another option beats on training data at no more cost; fewer
        heads means fewer chances for a noisy head to win the cheapest-above-threshold race.
    max_subsets : int
        Subsets of n samples per prompt used to estimate a soft label (all when fewer).
    representative_prompts : int
        Training prompts kept in the artifact, with every model's recorded answers, for adding
        a model later (:func:`onboard`; :class:`~bestroute.features.RepresentativePrompts` says
        how they are chosen); 0 keeps none, and the router cannot be given new models.
    Also every parameter of :class:`Router`.
    """

    name: ClassVar[str] = "best-route"
    knob: ClassVar[str] = "threshold"
    uses_samples: ClassVar[bool] = True
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"C": (0.3, 1.0, 3.0), "prune_dominated": (True, False)}
    fitted: ClassVar[tuple[str, ...]] = ("coef_", "intercept_")

    C: float = 1.0
    prune_dominated: bool = True
    max_subsets: int = 64
    representative_prompts: int = 100

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        labels = self._labels(self._cache, train, self.options_)
        labels[:, self.reference_index_] = 1.0  # the reference is always as good as itself
        self.label_mean_ = column_means(labels, empty=0.0)
        if self.prune_dominated:
            self.active_ = ~_dominated(self.label_mean_, self.option_cost_, self.outcomes_.available[train])
            self.active_[self.reference_index_] = True
        self.coef_, self.intercept_ = fit_soft_heads(x[train], np.where(self.active_, labels, np.nan), C=self.C)
        self.representative_, self.calibration_ = None, None
        answered = train[self.outcomes_.available[train, self.reference_index_]]
        if self.representative_prompts and len(answered):
            self.representative_ = RepresentativePrompts(n_prompts=self.representative_prompts, seed=self.seed)
            self.representative_.fit(x[answered])
            self.calibration_ = data.subset(rows=answered[self.representative_.rows_])
        self.changes_: list[dict[str, Any]] = []

    def _labels(self, cache: SelectionCache, rows: np.ndarray, options: list[Option]) -> np.ndarray:
        """The soft labels of ``options`` on the prompts ``rows`` of the cache's data."""
        return soft_labels(
            cache,
            rows,
            options,
            self.reference_,
            max_subsets=self.max_subsets,
            seed=self.seed,
            acceptance=self.accept_model_,
        )

    def _scores(self, x: np.ndarray) -> np.ndarray:
        scores = apply_heads(x, self.coef_, self.intercept_)
        scores[:, self.reference_index_] = 1.0
        return scores

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        meta |= {"label_mean": self.label_mean_.tolist(), "changes": self.changes_}
        if self.representative_ is not None and self.calibration_ is not None:
            for name, part in (("representative", self.representative_), ("calibration", self.calibration_)):
                meta[name], named = part.state()
                arrays |= {f"{name}_{key}": value for key, value in named.items()}
        return meta, arrays

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._load_state(meta, arrays)
        # artifacts before onboarding have neither the label means nor the representatives
        means = meta.get("label_mean")
        self.label_mean_ = np.array(means, dtype=float) if means is not None else np.full(len(self.options_), np.nan)
        self.changes_ = list(meta.get("changes", []))
        self.representative_, self.calibration_ = None, None
        if "representative" in meta:

            def named(prefix: str) -> dict[str, np.ndarray]:
                return {key.removeprefix(prefix): value for key, value in arrays.items() if key.startswith(prefix)}

            self.representative_ = RepresentativePrompts.from_state(meta["representative"], named("representative_"))
            self.calibration_ = RoutingDataset.from_state(meta["calibration"], named("calibration_"))


def _dominated(label_mean: np.ndarray, cost: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Options for which another option, answering wherever this one does, is no more costly
    and has a higher mean label."""
    covers = (available[:, :, None] | ~available[:, None, :]).all(axis=0)  # covers[a, b]: a covers b
    better = (cost[:, None] <= cost[None, :]) & (label_mean[:, None] > label_mean[None, :])
    return (covers & better).any(axis=0)


@dataclass(kw_only=True, eq=False)
class EscalatingBestRouteRouter(BestRouteRouter):
    """BEST-Route whose options may also verify and escalate: sample, let the selector pick, and
    keep the pick only when the selector is confident enough (the samples agree, or the reward
    model scores it high); otherwise ask the reference and pay for both.

    Besides the plain (model, n) options it has, built from the training prompts only:

    - mixtures of two or three cheap models, one sample each, accepted when all agree (two) or
      when at least two of three agree, else escalated; the cheap models are, per task where the
      data names tasks, the ``mix_models`` most accurate of those costing at most a third of the
      reference (so a mixture of three costs no more than the reference);
    - a cheap model's n samples (n = 3, 5 up to ``max_n``) accepted when at least
      ``accept_shares`` of them agree with the pick;
    - with a reward-model selector, one cheap sample accepted when its score is >= 0.3, 0.5, 0.7;
    - with ``calibrate``, *calibrated* options: pairs, triples and the whole set of the cheap
      models, pairs that ask more models when the calibrated probability is too low, a cheap
      model's 3 samples, and its 2 samples that draw up to ``max_n`` when unsure, kept when
      the router's acceptance model (fitted on the training prompts' stages: see
      :class:`bestroute.selection.AcceptanceModel`) gives the pick a probability >= each of
      ``accept_probabilities`` of being as good as the reference's answer.

    Each head predicts how often the whole policy (its pick, or the reference's answer where it
    escalates) is as good as the reference, and each option's cost on a prompt, escalations
    included, is predicted from the prompt's features (``cost_alpha``): an option that escalates
    often on prompts of some kind is expensive on them, so the cheapest-above-threshold rule
    accounts for it.

    Parameters
    ----------
    mix_models : int
        Cheap models (per task) that mixtures are drawn from.
    accept_shares : tuple of float
        Acceptance thresholds of a single model's n samples.
    calibrate : bool
        Add the calibrated options and fit their acceptance model (off by default: on the data
        measured here they gained nothing and doubled the fitting time; docs/results.md).
    accept_probabilities : tuple of float
        Thresholds of the calibrated options on the acceptance model's probability.
    accept_C : float
        Inverse L2 strength of the acceptance model.
    cost_alpha : float or None
        As for :class:`Router`; here 1.0 by default: on the zeroeval data, predicted costs
        raised the five-seed mean AUC by 0.002, on every seed (docs/results.md).
    Also every parameter of :class:`BestRouteRouter`.
    """

    name: ClassVar[str] = "best-route-escalate"
    cost_alpha: float | None = 1.0

    mix_models: int = 5
    accept_shares: tuple[float, ...] = (0.6, 1.0)
    calibrate: bool = False
    accept_probabilities: tuple[float, ...] = (0.9, 0.95, 0.98)
    accept_C: float = 1.0

    def __post_init__(self) -> None:
        self.accept_shares = tuple(self.accept_shares)  # an artifact's JSON gives a list
        self.accept_probabilities = tuple(self.accept_probabilities)

    def _fit_acceptance(self, data: RoutingDataset, train: np.ndarray) -> AcceptanceModel | None:
        stages = [stage for option in self.options_ if option.calibrated for stage in option.stages]
        if not stages:
            return None
        # The same stages, prompts and C give the same model: fits that share a cache (one per
        # hyperparameter candidate) share it, and so the outcomes of its options.
        key = ("acceptance", tuple(stages), np.asarray(train).tobytes(), self.reference_, self.accept_C)
        memo = self._cache.memo
        if key not in memo:
            signals, labels = acceptance_examples(self._cache, train, stages, self.reference_)
            memo[key] = AcceptanceModel(C=self.accept_C).fit(signals, labels) if len(labels) else None
        model: AcceptanceModel | None = memo[key]
        return model

    def _make_options(self, data: RoutingDataset, train: np.ndarray) -> list[Option]:
        return super()._make_options(data, train) + escalating_options(
            data,
            train,
            self.reference_,
            max_n=self.max_n,
            mix_models=self.mix_models,
            accept_shares=self.accept_shares,
            score_confidence=self._cache.selector.confidence == "score",
            accept_probabilities=self.accept_probabilities if self.calibrate else (),
        )

    def knob_grid(self) -> np.ndarray:
        return ESCALATION_GRID


MIX_SCORE_ACCEPTS = (0.3, 0.5, 0.7)
# (models in a mixture, share of their answers that must agree with the pick)
MIXTURES = ((2, 1.0), (3, 2 / 3), (3, 1.0), (4, 0.75), (4, 1.0), (5, 0.8), (5, 1.0))
# Mixtures grown in stages from a pair of the PAIR_MODELS best cheap models: (models added, share
# of all answers that must agree) when the pair disagrees; models added, all agreeing, to verify.
PAIR_MODELS = 4
GROWN_ON_DOUBT = ((1, 2 / 3), (2, 0.75))
GROWN_TO_VERIFY = (1, 2, 3)
# Escalating options' predicted labels crowd just below 1: the knob needs finer steps there.
ESCALATION_GRID = np.unique(np.concatenate([THRESHOLD_GRID, np.linspace(0.9, 1.0, 1001)]))


def escalating_options(
    data: RoutingDataset,
    train: np.ndarray,
    reference: Option,
    *,
    max_n: int,
    mix_models: int,
    accept_shares: tuple[float, ...],
    score_confidence: bool,
    accept_probabilities: tuple[float, ...] = (),
) -> list[Option]:
    """The verify-and-escalate options of :class:`EscalatingBestRouteRouter` (see there)."""
    ref_j = data.model_index(reference.model)
    cost, quality = data.single_sample_cost()[train], data.quality[train, :, 0]
    ref_cost = float(np.nanmean(cost[:, ref_j]))
    tasks = np.array([t or "" for t in data.tasks])[train]
    options: dict[Option, None] = {}  # ordered and without repeats
    for task in sorted(set(tasks)):
        rows = tasks == task
        answered = (~np.isnan(quality[rows])).mean(axis=0)
        cheap = [
            j
            for j in range(len(data.models))
            if j != ref_j and answered[j] >= 0.95 and np.nanmean(cost[rows, j]) <= ref_cost / 3
        ]
        ranked = sorted(cheap, key=lambda j: -np.nanmean(quality[rows, j]))[:mix_models]
        top = sorted(ranked)
        for size, accept in MIXTURES:
            for combo in combinations(top, size):
                options[Option.mixture(tuple(data.models[j] for j in combo), accept=accept)] = None
        # Two models first, more only where the pair says it is worth it: on doubt (the pair
        # disagrees: ask more of them, then the reference) or to verify (the pair agrees: ask
        # more, and keep only what they all agree on; a split pair goes to the reference).
        for pair in combinations(ranked[:PAIR_MODELS], 2):
            first = tuple(data.models[j] for j in pair)
            others = tuple(data.models[j] for j in ranked if j not in pair)
            for extra, share in GROWN_ON_DOUBT:
                if len(others) >= extra:
                    grown = Option.mixture(first + others[:extra], accept=share)
                    options[Option.mixture(first, accept=1.0, then=grown)] = None
            for extra in GROWN_TO_VERIFY:
                if len(others) >= extra:
                    grown = Option.mixture(first + others[:extra], accept=1.0)
                    options[Option.mixture(first, gate=1.0, then=grown)] = None
            for p in accept_probabilities:  # calibrated: the pair, else one or two more, else the reference
                options[Option.mixture(first, accept=p, calibrated=True)] = None
                for extra in (1, 2):
                    if len(others) >= extra:
                        grown = Option.mixture(first + others[:extra], accept=p, calibrated=True)
                        options[Option.mixture(first, accept=p, then=grown, calibrated=True)] = None
        for p in accept_probabilities:
            for size in sorted({3, len(top)}) if len(top) >= 3 else ():  # pairs are above
                for combo in combinations(top, size):
                    models = tuple(data.models[j] for j in combo)
                    options[Option.mixture(models, accept=p, calibrated=True)] = None
    for j, model in enumerate(data.models):
        paid = cost[~np.isnan(cost[:, j]), j]
        if j == ref_j or not paid.size or paid.mean() > ref_cost:  # (no answer here: nothing to judge)
            continue
        most = min(max_n, data.max_samples(j))
        for n in (3, 5):
            if n <= most:
                for share in accept_shares:
                    options[Option(model, n, accept=share)] = None
        if most >= 4:  # two samples first, more only when they disagree; the reference last, or never
            for share in accept_shares:
                options[Option(model, 2, accept=1.0, then=Option(model, most, accept=share))] = None
            options[Option(model, 2, accept=1.0, then=Option(model, most))] = None
        if score_confidence:
            for accept in MIX_SCORE_ACCEPTS:
                options[Option(model, 1, accept=accept)] = None
                if most >= 3:
                    options[Option(model, 1, accept=accept, then=Option(model, 3))] = None
        for p in accept_probabilities:  # calibrated: n samples, or two and more only when unsure
            if most >= 2:
                options[Option(model, min(3, most), accept=p, calibrated=True)] = None
            if most >= 4:
                grown = Option(model, most, accept=p, calibrated=True)
                options[Option(model, 2, accept=p, then=grown, calibrated=True)] = None
    return list(options)
