"""Onboarding a model into a trained router, leave-one-model-out on the zeroeval data.

Per split seed: the escalating router trained on every model (*full*); the models it uses most
(their share of the non-reference model calls it makes over its knob sweep on validation); for
each, the router trained without it (*without*), and that router given it back by ``onboard``
from its answers to the first K representative prompts (*onboarded*, K = 25, 50, 100). All are
swept on the test split of the whole data and scored on the full router's axis (its cheapest
single model and its reference's cost): AUC and cost reduction at a 1% drop. Every router has the
default hyperparameters. Prints one JSON object on the last line.

    python benchmarks/onboarding.py [--data ../shared/data/zeroeval] [--seeds 5] [--models 10] [--ks 25,50,100]
                                    [--caution 1.0]
"""

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bestroute import EscalatingBestRouteRouter, load_dataset, split_prompts
from bestroute.data import RoutingDataset
from bestroute.evaluation import area_under_curve, cost_reduction_at_drop
from bestroute.features import FeatureExtractor, make_extractor
from bestroute.reward import load_selector
from bestroute.routers import CAUTION, Router, choose_reference, onboard
from bestroute.selection import SelectionCache, option_outcomes

ROOT = Path(__file__).resolve().parents[1]


def _usage(router: Router, texts: list[str]) -> dict[str, float]:
    """Each model's share of the non-reference model calls of the router's decisions over its
    knob grid on ``texts``, most used first."""
    calls: dict[str, int] = {}
    assessed = router.assess(texts)
    for knob in router.knob_grid():
        for chosen in router.decide(assessed, float(knob)):
            if chosen != router.reference_index_:
                for model in router.options_[chosen].models:
                    calls[model] = calls.get(model, 0) + 1
    total = sum(calls.values())
    return {model: count / total for model, count in sorted(calls.items(), key=lambda kv: -kv[1])}


@dataclass(frozen=True)
class Setting:
    """One seed's data, features and split (validation and test: where the reference answered)."""

    data: RoutingDataset
    extractor: FeatureExtractor
    x: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    reference: str
    seed: int

    @classmethod
    def make(cls, data_path: str, seed: int) -> "Setting":
        data = load_dataset(data_path)
        extractor = make_extractor("static")
        split = split_prompts(data.prompt_ids, seed=seed)
        reference = choose_reference(data, split.val)
        answered = data.available[:, data.model_index(reference)]
        val, test = split.val[answered[split.val]], split.test[answered[split.test]]
        return cls(data, extractor, extractor.transform(data.texts), split.train, val, test, reference, seed)

    def fit(self, data: RoutingDataset) -> EscalatingBestRouteRouter:
        router = EscalatingBestRouteRouter(features="static", reference=self.reference, seed=self.seed)
        return router.fit(data, self.train, self.val, features=self.x, extractor=self.extractor)


def most_used(data_path: str, seed: int, models: int) -> list[tuple[str, float]]:
    """The ``models`` models the full router of ``seed`` uses most, with their shares."""
    setting = Setting.make(data_path, seed)
    usage = _usage(setting.fit(setting.data), [setting.data.texts[i] for i in setting.val])
    return list(usage.items())[:models]


def _seed(data_path: str, seed: int, models: list[str], ks: list[int], caution: float) -> dict[str, Any]:
    setting = Setting.make(data_path, seed)
    data, x, test = setting.data, setting.x, setting.test
    cache = SelectionCache(data, load_selector("consensus"))  # outcomes shared by every sweep below
    full = setting.fit(data)
    full_outcomes = option_outcomes(cache, full.options_, full.reference_, full.accept_model_)
    singles = [o for o, option in enumerate(full.options_) if option.single and o != full.reference_index_]
    cheapest = min(float(full_outcomes.cost[test, o].mean()) * 1000 for o in singles)
    reference_cost = float(full_outcomes.cost[test, full.reference_index_].mean()) * 1000
    reference_quality = float(full_outcomes.quality[test, full.reference_index_].mean())

    def score(router: Router) -> dict[str, float]:
        points = np.array(
            [
                [float(np.mean(d.cost)) * 1000, float(np.mean(d.quality))]
                for d in router.sweep(data, test, x[test], cache=cache)
            ]
        )
        return {
            "auc": round(area_under_curve(points, cheapest_cost=cheapest, reference_cost=reference_cost), 4),
            "cost_reduction": round(
                cost_reduction_at_drop(points, reference_quality=reference_quality, reference_cost=reference_cost), 4
            ),
        }

    full_score = score(full)
    print(f"seed {seed}: full {json.dumps(full_score)}", file=sys.stderr, flush=True)
    position = {pid: i for i, pid in enumerate(data.prompt_ids)}
    rows: list[dict[str, Any]] = []
    for model in models:
        without = setting.fit(data.subset(models=[m for m in data.models if m != model]))
        assert without.calibration_ is not None
        row: dict[str, Any] = {"model": model, "without": score(without)}
        # The first K representatives the model has recorded answers to: onboarding a model that
        # is live would ask it the first K; some models of the data answered only part of them.
        answered = [
            position[pid]
            for pid in without.calibration_.prompt_ids
            if data.available[position[pid], data.model_index(model)]
        ]
        for k in ks:
            if len(answered) < k:  # the data cannot say what the model would answer
                row[f"k{k}"] = {"skipped": f"recorded answers to {len(answered)} representative prompts"}
                continue
            asked = answered[:k]
            started = time.process_time()
            onboarded = onboard(without, data.subset(rows=asked, models=[model]), caution=caution)
            row[f"k{k}"] = score(onboarded) | {"cpu_s": round(time.process_time() - started, 2)}
        rows.append(row)
        print(f"seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return {"seed": seed, "reference": full.reference_.model, "full": full_score, "models": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--models", type=int, default=10, help="the models the full router uses most")
    parser.add_argument("--ks", default="25,50,100", help="calibration prompts, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="seeds run at once")
    parser.add_argument("--caution", type=float, default=CAUTION, help="onboard's caution (standard errors)")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    chosen = most_used(args.data, 0, args.models)  # by the seed-0 full router, one list for every seed
    names = [model for model, _ in chosen]
    # spawned, not forked: a fork of this process, whose fits ran thread pools, can deadlock
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        seeds = list(pool.map(_seed, *zip(*[(args.data, s, names, ks, args.caution) for s in range(args.seeds)])))
    per_model = []
    for model, share in chosen:
        found = [next(r for r in s["models"] if r["model"] == model) for s in seeds]
        entry: dict[str, Any] = {
            "model": model,
            "usage": round(share, 4),
            "full_auc": round(float(np.mean([s["full"]["auc"] for s in seeds])), 4),
            "without_auc": round(float(np.mean([r["without"]["auc"] for r in found])), 4),
        }
        for k in ks:
            if any("skipped" in r[f"k{k}"] for r in found):
                entry[f"k{k}_skipped"] = [r[f"k{k}"].get("skipped") for r in found]
                continue
            entry[f"k{k}_auc"] = round(float(np.mean([r[f"k{k}"]["auc"] for r in found])), 4)
            entry[f"k{k}_cost_reduction"] = round(float(np.mean([r[f"k{k}"]["cost_reduction"] for r in found])), 4)
        entry["full_cost_reduction"] = round(float(np.mean([s["full"]["cost_reduction"] for s in seeds])), 4)
        entry["without_cost_reduction"] = round(float(np.mean([r["without"]["cost_reduction"] for r in found])), 4)
        per_model.append(entry)
    summary: dict[str, Any] = {}
    for k in ks:
        measured = [e for e in per_model if f"k{k}_auc" in e]
        gaps = [e[f"k{k}_auc"] - e["full_auc"] for e in measured]
        gaining = [e for e in measured if e["full_auc"] > e["without_auc"]]
        summary[f"k{k}"] = {
            "within_0.005_of_full": f"{sum(g >= -0.005 for g in gaps)}/{len(gaps)}",
            "mean_auc_gap_to_full": round(float(np.mean(gaps)), 4),
            "worst_auc_gap_to_full": round(float(np.min(gaps)), 4),
            "above_without_where_full_gains": f"{sum(e[f'k{k}_auc'] > e['without_auc'] for e in gaining)}/{len(gaining)}",
            "cpu_s_max": max(r[f"k{k}"].get("cpu_s", 0.0) for s in seeds for r in s["models"]),
        }
    print(json.dumps({"models": per_model, "summary": summary, "seeds": seeds}))


if __name__ == "__main__":
    main()
