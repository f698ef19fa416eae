"""The router interface shared by BEST-Route and the baselines."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from .._artifact import write_artifact
from .._exceptions import RouterError
from ..data import RoutingDataset
from ..features import (
    DOMAIN_QUANTILE,
    CostHeads,
    DomainGuard,
    FeatureExtractor,
    extractor_from_state,
    make_extractor,
)
from ..policy import (
    PENALTY_GRID,
    THRESHOLD_GRID,
    DecisionRule,
    OperatingPoint,
    choose_knob,
    table_from_json,
    table_to_json,
)
from ..reward import load_selector
from ..selection import AcceptanceModel, Option, OptionOutcomes, SelectionCache, SelectorSpec, option_outcomes

ARTIFACT_VERSION = 1


def column_means(values: np.ndarray, *, empty: float) -> np.ndarray:
    """Each column's mean over its known (not NaN) entries, ``empty`` for a column with none:
    ``np.nanmean``'s arithmetic, without its warning for such a column (an option no training
    prompt could run is expected, not an error)."""
    known = ~np.isnan(values)
    counts = known.sum(axis=0)
    sums = np.where(known, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), empty)


@dataclass(frozen=True)
class Decisions:
    """Offline outcome of one knob value on a set of prompts."""

    option: np.ndarray  # chosen option per prompt
    quality: np.ndarray
    cost: np.ndarray  # USD per prompt, escalation included
    escalated: np.ndarray  # bool per prompt: the chosen option escalated to the reference


@dataclass(frozen=True)
class Assessment:
    """What a router makes of prompts before deciding: per-option scores and expected costs,
    and each prompt's distance from the training prompts and whether that puts it out of the
    router's domain."""

    scores: np.ndarray  # (prompts, options)
    cost: np.ndarray  # (prompts, options): USD, escalations included (:meth:`Router.costs`)
    distance: np.ndarray | None  # None: the router has no domain guard
    out_of_domain: np.ndarray | None


@dataclass(kw_only=True, eq=False)
class Router:
    """Base of every router: options, reference, features, decisions and the artifact.

    Subclasses set ``name`` and ``knob`` ("threshold": cheapest option scoring >= t, or
    "cost_penalty": best score minus penalty x relative cost), their ``param_grid``, the
    ``fitted`` attributes ``_fit_scores`` sets and, where it applies, ``servable`` and
    ``upper_bound``, and implement ``_fit_scores`` and ``_scores``. A router is a keyword-only
    dataclass: each hyperparameter is a field with its default, so ``__init__`` takes exactly
    them and :meth:`get_params` (hence the artifact) finds every one. Fitted state is set by
    ``fit`` in attributes ending in ``_``, never fields.

    Parameters
    ----------
    features : str
        Feature extractor: ``auto``, ``static``, ``minilm`` or ``lexical``.
    reference : str or None
        The reference (large) model; None takes the one the data names (``models.json``'s
        ``reference``), else :func:`choose_reference` on validation.
    max_n : int
        Largest number of samples an option may draw.
    selector : str
        How best-of-n keeps one response offline: ``consensus`` (default), ``majority``,
        ``reward-model:PATH``; ``oracle`` is an upper bound, never a serving selector.
    seed : int
        Seed for anything random.
    domain_quantile : float or None
        The out-of-domain guard: a prompt farther from the training prompts than this share of
        the validation prompts (:class:`~bestroute.features.DomainGuard`) goes to the reference,
        offline and in the gateway. None: no guard.
    cost_alpha : float or None
        Each option's expected cost is predicted per prompt from its features
        (:class:`~bestroute.features.CostHeads`, ridge regressions of this strength) and the
        decision rule compares those; None: each option costs its mean over the training prompts
        on every prompt.
    """

    name: ClassVar[str]
    knob: ClassVar[str] = "cost_penalty"
    uses_samples: ClassVar[bool] = False  # True: options (model, n) for n > 1 too
    # Candidate hyperparameters, chosen by validation AUC in `bestroute eval`.
    param_grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    servable: ClassVar[bool] = True  # False: the gateway refuses its artifact
    upper_bound: ClassVar[bool] = False  # True: it sees realised outcomes (a bound, not a router)
    # Fitted attributes the artifact keeps (named without the trailing underscore): arrays in its
    # archive, numbers in its JSON.
    fitted: ClassVar[tuple[str, ...]] = ()

    features: str = "auto"
    reference: str | None = None
    max_n: int = 5
    selector: str = "consensus"
    seed: int = 0
    domain_quantile: float | None = DOMAIN_QUANTILE
    cost_alpha: float | None = None

    # ----------------------------------------------------------------- fitting
    def fit(
        self,
        data: RoutingDataset,
        train: np.ndarray,
        val: np.ndarray | None = None,
        *,
        features: np.ndarray | None = None,
        extractor: FeatureExtractor | None = None,
        cache: SelectionCache | None = None,
    ) -> Self:
        """Fit on the ``train`` prompts of ``data``; with ``val``, choose the reference there and
        record the operating-point table. ``features``/``extractor`` reuse precomputed rows;
        ``cache`` shares the selector's judgments and outcomes with other fits on ``data``."""
        if self.max_n < 1:
            raise RouterError(f"max_n must be >= 1, got {self.max_n}")
        spec = SelectorSpec.parse(self.selector)
        if cache is not None and (cache.data is not data or cache.selector.spec != spec):
            raise RouterError(f"the cache given holds another dataset's or selector's results than {self.selector!r}")
        self._cache = cache if cache is not None else SelectionCache(data, load_selector(spec))
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The features (an ONNX model, which releases the GIL) are made on the other core
            # while the options' outcomes are run on the recorded samples; neither reads the other.
            made = pool.submit(self._features, data, features, extractor)
            chooser = val if val is not None and len(val) else train
            self.reference_ = Option(choose_reference(data, chooser, self.reference))
            self.options_ = self._make_options(data, train)
            self.accept_model_ = self._fit_acceptance(data, train)
            self.outcomes_ = option_outcomes(self._cache, self.options_, self.reference_, self.accept_model_)
            self.extractor_, x = made.result()
        self.domain_ = (
            DomainGuard(quantile=self.domain_quantile, seed=self.seed).fit(
                x[train], x[val] if val is not None and len(val) else None
            )
            if self.domain_quantile is not None
            else None
        )
        self._fit_data = data
        self.reference_index_ = self.options_.index(self.reference_)
        cost = np.where(self.outcomes_.available[train], self.outcomes_.cost[train], np.nan)
        self.option_cost_ = column_means(cost, empty=np.inf)
        self.cost_heads_ = (
            None
            if self.cost_alpha is None
            else CostHeads(alpha=self.cost_alpha).fit(
                x[train], self.outcomes_.cost[train], self.outcomes_.available[train]
            )
        )
        self.active_ = np.ones(len(self.options_), dtype=bool)
        self._fit_scores(data, x, train)
        self.table_ = self._operating_table(data, val, x[val]) if val is not None and len(val) else []
        self.acceptance_ = self._acceptance(chooser)
        return self

    def _features(
        self, data: RoutingDataset, features: np.ndarray | None, extractor: FeatureExtractor | None
    ) -> tuple[FeatureExtractor, np.ndarray]:
        made = extractor or make_extractor(self.features)
        return made, features if features is not None else made.transform(data.texts)

    def _acceptance(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Per escalating option, on ``rows`` (validation): how often it kept its own pick, and
        the mean quality of the answers it kept."""
        stats = []
        for o, option in enumerate(self.options_):
            accepted = self.outcomes_.accepted[rows, o]
            if option.accept is None or np.isnan(accepted).all():
                continue
            kept = accepted == 1
            stats.append(
                {
                    "option": option.label,
                    "prompts": int((~np.isnan(accepted)).sum()),
                    "accepted": float(np.nanmean(accepted)),
                    "accepted_quality": float(self.outcomes_.quality[rows[kept], o].mean()) if kept.any() else None,
                }
            )
        return stats

    def _make_options(self, data: RoutingDataset, train: np.ndarray) -> list[Option]:
        options = []
        for j, model in enumerate(data.models):
            top = min(self.max_n, data.max_samples(j)) if self.uses_samples else 1
            options += [Option(model, n) for n in range(1, max(top, 1) + 1)]
        return options

    def _fit_acceptance(self, data: RoutingDataset, train: np.ndarray) -> AcceptanceModel | None:
        """The acceptance model of the router's calibrated options, fitted on ``train`` (None:
        it has none)."""
        return None

    def _fit_scores(self, data: RoutingDataset, x: np.ndarray, train: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -------------------------------------------------------------- predicting
    def _check_fitted(self) -> None:
        if not hasattr(self, "options_"):
            raise RouterError(f"router {self.name!r} is not fitted")

    def predict(self, texts: list[str]) -> np.ndarray:
        """Per-option scores, shape (len(texts), len(options_))."""
        self._check_fitted()
        return self._scores(self.extractor_.transform(list(texts)))

    def assess(self, texts: list[str], *, guard: bool = True) -> Assessment:
        """Scores, expected costs and (with ``guard``, where the router has one) the domain
        guard's reading of ``texts``, from one feature extraction."""
        self._check_fitted()
        return self._assessed(self.extractor_.transform(list(texts)), guard=guard)

    def _assessed(self, x: np.ndarray, *, guard: bool = True) -> Assessment:
        scores, cost = self._scores(x), self.costs(x)
        if self.domain_ is None or not guard:
            return Assessment(scores, cost, None, None)
        distance = self.domain_.distance(x)
        return Assessment(scores, cost, distance, distance > self.domain_.threshold_)

    def costs(self, x: np.ndarray) -> np.ndarray:
        """Every option's expected cost (USD) on each row of features ``x``: the cost heads'
        prediction, or without them each option's mean cost (prompts, options)."""
        if self.cost_heads_ is None:
            return np.broadcast_to(self.option_cost_, (len(x), len(self.option_cost_)))
        return self.cost_heads_.predict(x)

    def _out_of_domain(self, x: np.ndarray) -> np.ndarray | None:
        return None if self.domain_ is None else self.domain_.out_of_domain(x)

    @property
    def rule(self) -> DecisionRule:
        """The decision rule with this router's fitted costs, reference and active options."""
        self._check_fitted()
        return DecisionRule(self.knob, self.option_cost_, self.reference_index_, self.active_)

    def decide(self, assessed: Assessment, knob: float, available: np.ndarray | None = None) -> np.ndarray:
        """One option index per prompt :meth:`assess` read, for the knob value, by its scores and
        expected costs; a prompt the guard flags gets the reference wherever it is available."""
        usable = self.guarded(available, assessed.out_of_domain, len(assessed.scores))
        return self.rule.decide(assessed.scores, knob, usable, assessed.cost)

    def guarded(self, available: np.ndarray | None, out_of_domain: np.ndarray | None, rows: int) -> np.ndarray | None:
        """``available`` with the out-of-domain rows left only the reference (where it is available)."""
        if out_of_domain is None or not out_of_domain.any():
            return available
        usable = np.ones((rows, len(self.options_)), dtype=bool) if available is None else available.copy()
        flagged = out_of_domain & usable[:, self.reference_index_]
        usable[flagged] = False
        usable[flagged, self.reference_index_] = True
        return usable

    def route(self, texts: list[str], *, knob: float | None = None) -> list[dict[str, Any]]:
        """Decisions with what led to them: option, scores, expected cost. An empty prompt or a
        knob the decision rule cannot use is a RouterError."""
        knob = self.default_knob() if knob is None else self.rule.check(knob)
        if any(not text.strip() for text in texts):
            raise RouterError("a prompt to route is empty")
        assessed = self.assess(texts)
        flags = assessed.out_of_domain
        return [
            {
                "option": self.options_[c].label,
                "model": self.options_[c].model,
                "n": self.options_[c].n,
                self.knob: knob,
                "expected_cost_usd": float(assessed.cost[i, c]),
                "scores": {o.label: float(s) for o, s in zip(self.options_, row)},
                "out_of_domain": None if flags is None else bool(flags[i]),
            }
            for i, (c, row) in enumerate(zip(self.decide(assessed, knob), assessed.scores, strict=True))
        ]

    def knob_grid(self) -> np.ndarray:
        return THRESHOLD_GRID if self.knob == "threshold" else PENALTY_GRID

    def default_knob(self) -> float:
        """The cheapest validation operating point within 1% of the reference's quality."""
        try:
            return choose_knob(self.table_, min_relative_quality=0.99).knob
        except RouterError:
            return float(self.knob_grid()[-1] if self.knob == "threshold" else 0.0)

    def knob_for(self, *, min_relative_quality: float | None = None, max_cost_per_1k: float | None = None) -> float:
        """The knob value that met the target on validation."""
        self._check_fitted()
        if not self.table_:
            raise RouterError("this router was fitted without validation data; it has no operating table")
        return choose_knob(self.table_, min_relative_quality=min_relative_quality, max_cost_per_1k=max_cost_per_1k).knob

    # ---------------------------------------------------------------- offline
    def sweep(
        self,
        data: RoutingDataset,
        rows: np.ndarray,
        x: np.ndarray,
        knobs: np.ndarray | None = None,
        *,
        cache: SelectionCache | None = None,
    ) -> list[Decisions]:
        """Decisions on ``rows`` for every knob value; ``x`` are the rows' features. ``cache``
        (of ``data``) shares the options' outcomes with other routers swept on the same data."""
        knobs = self.knob_grid() if knobs is None else knobs
        outcomes = self._outcomes_on(data, cache)
        assessed = self._assessed(x)
        available = self.guarded(outcomes.available[rows], assessed.out_of_domain, len(rows))
        index = np.arange(len(rows))
        out = []
        for knob in knobs:  # Router.decide's choice, the guard applied once for every knob
            choice = self.rule.decide(assessed.scores, float(knob), available, assessed.cost)
            out.append(
                Decisions(
                    option=choice,
                    quality=outcomes.quality[rows][index, choice],
                    cost=outcomes.cost[rows][index, choice],
                    escalated=outcomes.accepted[rows][index, choice] == 0,
                )
            )
        return out

    def _outcomes_on(self, data: RoutingDataset, cache: SelectionCache | None = None) -> OptionOutcomes:
        # Outcomes of the fitting data are kept from fit; other data gets its own.
        if data is getattr(self, "_fit_data", None):
            return self.outcomes_
        if cache is None:
            cache = SelectionCache(data, load_selector(self.selector))
        elif cache.data is not data or cache.selector.spec != SelectorSpec.parse(self.selector):
            raise RouterError(f"the cache given holds another dataset's or selector's results than {self.selector!r}")
        return option_outcomes(cache, self.options_, self.reference_, self.accept_model_)

    def _operating_table(
        self, data: RoutingDataset, val: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None
    ) -> list[OperatingPoint]:
        """Quality and cost of every knob value on the prompts ``val`` of ``data`` (``x`` their
        features), each prompt counted with its weight (default: once)."""
        outcomes = self._outcomes_on(data)
        # Relative quality needs the reference's answer; prompts it did not answer say nothing.
        answered = outcomes.available[val, self.reference_index_]
        weights = np.ones(len(val)) if weights is None else np.asarray(weights, dtype=float)
        val, x, weights = val[answered], x[answered], weights[answered]
        if not len(val):
            return []
        ref_quality = float(np.average(outcomes.quality[val, self.reference_index_], weights=weights))
        table = []
        for knob, d in zip(self.knob_grid(), self.sweep(data, val, x)):
            quality = float(np.average(d.quality, weights=weights))
            table.append(
                OperatingPoint(
                    knob=float(knob),
                    quality=quality,
                    relative_quality=quality / ref_quality if ref_quality else 0.0,
                    cost_per_1k=float(np.average(d.cost, weights=weights) * 1000),
                )
            )
        return table

    # --------------------------------------------------------------- artifact
    def save(self, path: str | Path) -> None:
        """Write the fitted router to one file (a NumPy .npz archive, no pickles)."""
        self._check_fitted()
        feature_meta, feature_arrays = self.extractor_.state()
        meta, arrays = self._state()
        document = {
            "version": ARTIFACT_VERSION,
            "router": self.name,
            "params": self.get_params(),
            "options": [_option_to_json(o) for o in self.options_],
            "reference": self.reference_.model,
            "option_cost": self.option_cost_.tolist(),
            "active": self.active_.tolist(),
            "table": table_to_json(self.table_),
            "acceptance": self.acceptance_,
            "features": feature_meta,
            "state": meta,
        }
        archives = {"features": feature_arrays, "state": arrays}
        if self.accept_model_ is not None:
            document["accept_model"], archives["accept_model"] = self.accept_model_.state()
        if self.domain_ is not None:
            document["domain"], archives["domain"] = self.domain_.state()
        if self.cost_heads_ is not None:
            document["cost_heads"], archives["cost_heads"] = self.cost_heads_.state()
        write_artifact(path, document, archives)

    @classmethod
    def _load(cls, document: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> "Router":
        router = cls(**document["params"])
        router.options_ = [_option_from_json(o) for o in document["options"]]
        router.reference_ = Option(document["reference"])
        router.reference_index_ = router.options_.index(router.reference_)
        router.option_cost_ = np.array(document["option_cost"], dtype=float)
        router.active_ = np.array(document["active"], dtype=bool)
        router.table_ = table_from_json(document["table"])
        router.acceptance_ = document.get("acceptance", [])  # artifacts before escalation have none
        accept_model = document.get("accept_model")  # only a router with calibrated options has one
        router.accept_model_ = (
            AcceptanceModel.from_state(accept_model, arrays.get("accept_model", {})) if accept_model else None
        )
        domain = document.get("domain")  # artifacts before the guard have none
        router.domain_ = DomainGuard.from_state(domain, arrays["domain"]) if domain else None
        heads = document.get("cost_heads")  # artifacts before them, and routers without: mean costs
        router.cost_heads_ = CostHeads.from_state(heads, arrays["cost_heads"]) if heads else None
        router.extractor_ = extractor_from_state(document["features"], arrays.get("features", {}))
        router._load_state(document["state"], arrays.get("state", {}))
        return router

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters, as scikit-learn names them: the keyword arguments of ``__init__``,
        which are the dataclass fields of the class and its bases."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = {}, {}
        for attribute in self.fitted:
            value = getattr(self, attribute)
            if isinstance(value, np.ndarray):
                arrays[attribute.rstrip("_")] = value
            else:
                meta[attribute.rstrip("_")] = value
        return meta, arrays

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for attribute in self.fitted:
            key = attribute.rstrip("_")
            setattr(self, attribute, arrays[key] if key in arrays else meta[key])
        self._restore()

    def _restore(self) -> None:
        """Rebuild what derives from the fitted attributes, after loading (nothing by default)."""


def _option_to_json(option: Option) -> list[Any] | dict[str, Any]:
    if not option.composite:
        return [option.model, option.n]  # the form every artifact version reads
    document = {"model": option.model, "n": option.n, "mix": list(option.mix), "accept": option.accept}
    if option.calibrated:
        document["calibrated"] = True
    if option.then is not None:
        document |= {"then": _option_to_json(option.then), "gate": option.gate}
    return document


def _option_from_json(document: list[Any] | dict[str, Any]) -> Option:
    if isinstance(document, list):
        return Option(str(document[0]), int(document[1]))
    then = _option_from_json(document["then"]) if document.get("then") is not None else None
    return Option(
        str(document["model"]),
        int(document["n"]),
        tuple(document["mix"]),
        document["accept"],
        then,
        document.get("gate", 0.0),
        bool(document.get("calibrated", False)),
    )


MIN_REFERENCE_COVERAGE = 0.8


def choose_reference(data: RoutingDataset, rows: np.ndarray, name: str | None = None) -> str:
    """The reference model: ``name`` if given, else the one the data names, else the model with
    the best mean quality on ``rows`` among those that answered every prompt — or, in sparse
    data where none did, among those that answered at least 80% of the prompts (quality over
    the prompts each answered)."""
    chosen = name or data.reference_model
    if chosen:
        data.model_index(chosen)  # an unknown name fails here, naming the known ones
        return chosen
    coverage = data.available.mean(axis=0)
    eligible = coverage == 1.0 if (coverage == 1.0).any() else coverage >= MIN_REFERENCE_COVERAGE
    if not eligible.any():
        raise RouterError(
            f"no model answered {MIN_REFERENCE_COVERAGE:.0%} of the prompts (best: "
            f"{data.models[int(np.argmax(coverage))]}, {coverage.max():.0%}); "
            "name the reference model (--reference)"
        )
    answered = data.available[rows]
    count = answered.sum(axis=0)
    quality = np.where(answered, data.mean_quality()[rows], 0.0).sum(axis=0) / np.maximum(count, 1)
    quality = np.where(eligible & (count > 0), quality, -np.inf)
    return data.models[int(np.argmax(quality))]
