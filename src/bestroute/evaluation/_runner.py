"""`bestroute eval`: fit every router on train, choose hyperparameters on validation, sweep
its knob on test, and report the cost-quality metrics."""

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import RouterError
from ..data import RoutingDataset, Split, in_sample, split_prompts
from ..features import DOMAIN_QUANTILE, make_extractor
from ..reward import load_selector
from ..routers import ROUTERS, Decisions, Router, choose_reference
from ..selection import SelectionCache
from ._metrics import area_under_curve, cost_reduction_at_drop, quality_at_cost
from ._plot import plot_curves

DEFAULT_ROUTERS = list(ROUTERS)


def _curve(decisions: list[Decisions]) -> np.ndarray:
    return np.array([[float(np.mean(d.cost) * 1000), float(np.mean(d.quality))] for d in decisions])


def _grid(name: str) -> list[dict[str, Any]]:
    space = ROUTERS[name].param_grid
    return [dict(zip(space, values)) for values in itertools.product(*space.values())] or [{}]


def evaluate(
    data: RoutingDataset,
    *,
    routers: list[str] | None = None,
    seed: int = 0,
    features: str = "auto",
    max_n: int = 5,
    selector: str = "consensus",
    reference: str | None = None,
    domain_quantile: float | None = DOMAIN_QUANTILE,
    train_sample: float | None = None,
    log: Callable[[str], None] = lambda _: None,
    progress: Callable[[str, int, int], None] = lambda *_: None,
) -> dict[str, Any]:
    """Evaluate routers on ``data``; returns the document written to ``results.json``.
    ``log`` gets a line per step; ``progress`` gets (what is running, steps done, steps in all):
    the features, each router's fits over its grid, and its test sweep. ``domain_quantile``: the
    routers' out-of-domain guard (None: none). ``train_sample``: fit on the training prompts of
    the sample ``bestroute train --sample`` draws (``in_sample``), validation and test whole, so
    what training on a sample costs is measured on the same test prompts."""
    names = routers or DEFAULT_ROUTERS
    unknown = [n for n in names if n not in ROUTERS]
    if unknown:
        raise RouterError(f"unknown router(s) {', '.join(unknown)}; choose from {', '.join(ROUTERS)}")
    split = split_prompts(data.prompt_ids, seed=seed)
    if min(len(split.train), len(split.val), len(split.test)) == 0:
        raise RouterError(f"too few prompts ({data.n_prompts}) to split into train, validation and test")
    reference = choose_reference(data, split.val, reference)
    split, unanswered = _answered_by(data, split, reference)
    if unanswered:
        log(f"{unanswered} validation and test prompts left out: the reference {reference} did not answer them")
    if train_sample is not None:
        kept = np.array([in_sample(data.prompt_ids[i], train_sample) for i in split.train], dtype=bool)
        split = Split(train=split.train[kept], val=split.val, test=split.test)
        log(f"fitting on a sample of {kept.sum()} of {kept.size} training prompts")
    steps, done = 1 + sum(len(_grid(name)) + 1 for name in names), 0
    progress("features", done, steps)
    started = time.perf_counter()
    extractor = make_extractor(features)
    x = extractor.transform(data.texts)
    done += 1
    log(
        f"features: {extractor.name} {x.shape[1]}-d for {data.n_prompts} prompts "
        f"in {time.perf_counter() - started:.1f}s"
    )
    common: dict[str, Any] = {
        "features": extractor.name,
        "reference": reference,
        "max_n": max_n,
        "selector": selector,
        "seed": seed,
        "domain_quantile": domain_quantile,
    }
    results: dict[str, Any] = {
        "data": data.source,
        "seed": seed,
        "features": extractor.name,
        "max_n": max_n,
        "selector": selector,
        "split": {k: len(getattr(split, k)) for k in ("train", "val", "test")}
        | {"left_out_without_reference": unanswered, "train_sample": train_sample},
        "routers": {},
    }
    reference_info: dict[str, Any] | None = None
    cache = SelectionCache(data, load_selector(selector))  # every fit below shares the selector's judgments
    for name in names:
        tic = time.perf_counter()
        best: tuple[float, Router, dict[str, Any]] | None = None
        for params in _grid(name):
            progress(f"{name}: fitting", done, steps)
            done += 1
            router = ROUTERS[name](**common, **params).fit(
                data, split.train, split.val, features=x, extractor=extractor, cache=cache
            )
            val_points = _curve(router.sweep(data, split.val, x[split.val]))
            val_auc = _auc(router, val_points, split.val)
            if best is None or val_auc > best[0]:
                best = (val_auc, router, params)
        progress(f"{name}: test sweep", done, steps)
        done += 1
        assert best is not None  # every router has at least one grid point
        val_auc, router, params = best
        if reference_info is None:
            reference_info = _reference(router, split)
            results["reference"] = reference_info
            results["single_models"] = _single_models(router, data, split)
        decisions = router.sweep(data, split.test, x[split.test])
        points = _curve(decisions)
        entry = _metrics(router, points, split, reference_info)
        best_of_n = np.array([o.n > 1 for o in router.options_])
        entry["best_of_n_share"] = [round(float(best_of_n[d.option].mean()), 4) for d in decisions]
        entry["escalation_rate"] = [round(float(d.escalated.mean()), 4) for d in decisions]
        entry["escalation_rate_at_1pct_drop"] = _at_drop_point(points, entry["escalation_rate"], reference_info)
        entry |= {
            "upper_bound": router.upper_bound,
            "params": params,
            "val_auc": val_auc,
            "options": len(router.options_),
            "out_of_domain_share": None
            if router.domain_ is None
            else round(float(router.domain_.out_of_domain(x[split.test]).mean()), 4),
            "decision_latency_ms_p50": _latency_ms(router, [data.texts[i] for i in split.test[:50]]),
        }
        results["routers"][name] = entry
        log(
            f"{name}: auc={entry['auc']:.4f} cost_reduction@1%={entry['cost_reduction_at_1pct_drop']:.3f} "
            f"({time.perf_counter() - tic:.1f}s)"
        )
    progress("done", steps, steps)
    return results


def _answered_by(data: RoutingDataset, split: Split, reference: str) -> tuple[Split, int]:
    """The split with validation and test restricted to prompts the reference answered (a
    router falls back to it, and every metric compares with it), and how many were left out."""
    answered = data.available[:, data.model_index(reference)]
    kept = Split(train=split.train, val=split.val[answered[split.val]], test=split.test[answered[split.test]])
    if min(len(kept.val), len(kept.test)) == 0:
        raise RouterError(
            f"the reference {reference} answered no validation or no test prompt; choose another (--reference)"
        )
    return kept, len(split.val) + len(split.test) - len(kept.val) - len(kept.test)


def _cheapest_cost_per_1k(router: Router, rows: np.ndarray) -> float:
    """The left end of the AUC's cost axis: the cheapest single model other than the reference
    that answered every one of ``rows``; in sparse data where none did, the cheapest by its mean
    over the prompts it answered, among those that answered at least half of them."""
    outcomes = router.outcomes_
    single = np.array([o.single for o in router.options_])
    single[router.reference_index_] = False
    answered = outcomes.available[rows]
    total = np.where(answered, outcomes.cost[rows], 0.0).sum(axis=0)
    cost = total / np.maximum(answered.sum(axis=0), 1) * 1000
    complete = single & answered.all(axis=0)
    usable = complete if complete.any() else single & (answered.mean(axis=0) >= 0.5)
    return float(np.where(usable, cost, np.inf).min()) if usable.any() else 0.0


def _reference(router: Router, split: Split) -> dict[str, Any]:
    outcomes, ref = router.outcomes_, router.reference_index_
    return {
        "model": router.reference_.model,
        "quality": float(outcomes.quality[split.test, ref].mean()),
        "cost_per_1k": float(outcomes.cost[split.test, ref].mean() * 1000),
        "cheapest_cost_per_1k": _cheapest_cost_per_1k(router, split.test),
    }


def _single_models(router: Router, data: RoutingDataset, split: Split) -> list[dict[str, Any]]:
    """Test quality and cost of each model (one sample) that answered every test prompt."""
    outcomes = router.outcomes_
    rows = []
    for o, option in enumerate(router.options_):
        if option.single and outcomes.available[split.test, o].all():
            rows.append(
                {
                    "model": option.model,
                    "quality": float(outcomes.quality[split.test, o].mean()),
                    "cost_per_1k": float(outcomes.cost[split.test, o].mean() * 1000),
                }
            )
    return rows


def _auc(router: Router, points: np.ndarray, rows: np.ndarray) -> float:
    cheapest = _cheapest_cost_per_1k(router, rows)
    reference_cost = float(router.outcomes_.cost[rows, router.reference_index_].mean() * 1000)
    if reference_cost <= cheapest:
        raise RouterError(
            f"the reference {router.reference_.model} costs ${reference_cost:.4f} "
            "per 1k prompts, "
            f"no more than the cheapest model (${cheapest:.4f}): there is nothing to save; "
            "name a costlier reference (--reference)"
        )
    return area_under_curve(points, cheapest_cost=cheapest, reference_cost=reference_cost)


def _metrics(router: Router, points: np.ndarray, split: Split, ref: dict[str, Any]) -> dict[str, Any]:
    at_ref_cost = quality_at_cost(points, max_cost=ref["cost_per_1k"])
    affordable = not np.isnan(at_ref_cost)  # None in JSON: no point of the curve costs <= the reference
    return {
        "curve": points.round(6).tolist(),
        "auc": _auc(router, points, split.test),
        "cost_reduction_at_1pct_drop": cost_reduction_at_drop(
            points, reference_quality=ref["quality"], reference_cost=ref["cost_per_1k"]
        ),
        "quality_at_reference_cost": at_ref_cost if affordable else None,
        "quality_gain_at_reference_cost": at_ref_cost - ref["quality"] if affordable else None,
    }


def _at_drop_point(points: np.ndarray, values: list[float], ref: dict[str, Any]) -> float | None:
    """``values`` (one per curve point) at the point ``cost_reduction_at_1pct_drop`` reports."""
    good = np.flatnonzero(points[:, 1] >= 0.99 * ref["quality"] - 1e-12)
    return values[int(good[np.argmin(points[good, 0])])] if good.size else None


def _latency_ms(router: Router, texts: list[str]) -> float | None:
    """Median wall time of routing one prompt (features + heads + decision)."""
    if router.upper_bound:
        return None
    knob = router.default_knob()
    timings = []
    for text in texts:
        tic = time.perf_counter()
        assessed = router.assess([text])
        router.decide(assessed, knob)
        timings.append((time.perf_counter() - tic) * 1000)
    return float(np.median(timings))


def markdown_table(results: dict[str, Any]) -> str:
    ref = results["reference"]
    lines = [
        f"Reference: {ref['model']} — quality {ref['quality']:.4f}, ${ref['cost_per_1k']:.3f} per 1k prompts",
        "",
        f"Best-of-n selector: {results['selector']}",
        "",
        (
            "| router | AUC | cost reduction at 1% drop | escalated there | quality at reference cost | "
            "vs reference | most best-of-n | p50 ms |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["routers"].items():
        latency = "—" if r["decision_latency_ms_p50"] is None else f"{r['decision_latency_ms_p50']:.2f}"
        at_cost, gain = r["quality_at_reference_cost"], r["quality_gain_at_reference_cost"]
        at_cost_text = "—" if at_cost is None else f"{at_cost:.4f}"
        gain_text = "—" if gain is None else f"{gain:+.4f}"
        escalated = r["escalation_rate_at_1pct_drop"]
        escalated_text = "—" if escalated is None else f"{escalated:.0%}"
        lines.append(
            f"| {name} | {r['auc']:.4f} | {r['cost_reduction_at_1pct_drop']:.3f} | {escalated_text} | "
            f"{at_cost_text} | "
            f"{gain_text} | "
            f"{max(r['best_of_n_share']):.0%} | {latency} |"
        )
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    plot_curves(results, out_dir / "curves.png")
