"""The local multi-strategy set (issue 21, item 4): merge routing data of the same prompts sampled
under different strategies, write it and its one-strategy-per-model subsets, and print how
correlated the strategies' errors are, as JSON.

    python scripts/strategy_sets.py --data src/bestroute/demo_data --data DIR_WITH_STRATEGIES --out OUT

writes OUT/all (every arm) and OUT/only-<strategy> (each model under that one strategy; "as-sent"
is the prompt as it is), then prints, per model and pair of its arms: the correlation over
prompts of their error rates, P(both wrong) against P(one wrong) x P(the other wrong) on the same
prompt and sample number, and each arm's mean quality.
"""

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from bestroute.data import ModelPrice, arm_parts, iter_rows, load_dataset, read_models, write_routing_data


def _records(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, ModelPrice], str | None]:
    catalog = json.loads((directory / "models.json").read_text())
    prompts = [row for _, row in iter_rows(next(directory.glob("prompts.*")))]
    responses = [row for _, row in iter_rows(next(directory.glob("responses.*")))]
    return prompts, responses, read_models(directory / "models.json"), catalog.get("reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="routing data (repeat)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", default=None, help="the reference arm of the merged set")
    args = parser.parse_args()
    prompts: dict[str, dict[str, Any]] = {}
    responses: list[dict[str, Any]] = []
    models: dict[str, ModelPrice] = {}
    reference = args.reference
    for directory in args.data:
        found, rows, prices, named = _records(directory)
        prompts |= {p["prompt_id"]: p for p in found}
        responses += rows
        models |= prices
        reference = reference or named
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for row in responses:
        by_strategy.setdefault(row.get("strategy") or "as-sent", []).append(row)
    sets = {"all": responses} | {f"only-{name}": rows for name, rows in by_strategy.items()}
    for name, rows in sets.items():
        arms = {(r["model"], r.get("strategy")) for r in rows}
        ref = reference if reference in {f"{m}@{s}" if s else m for m, s in arms} else None
        write_routing_data(args.out / name, list(prompts.values()), rows, models, reference=ref)
    data = load_dataset(args.out / "all")
    quality = {arm: round(float(np.nanmean(data.quality[:, j, :])), 4) for j, arm in enumerate(data.models)}
    pairs = [
        _pair(data.quality[:, a], data.quality[:, b], data.max_samples(a), data.max_samples(b))
        | {"arms": [arm_a, arm_b]}
        for (a, arm_a), (b, arm_b) in itertools.combinations(enumerate(data.models), 2)
        if arm_parts(arm_a)[0] == arm_parts(arm_b)[0]
    ]
    print(json.dumps({"prompts": data.n_prompts, "mean_quality": quality, "pairs": pairs}, indent=2))


def _pair(quality_a: np.ndarray, quality_b: np.ndarray, samples_a: int, samples_b: int) -> dict[str, object]:
    """How correlated two arms' errors are, on the samples both have (same prompt and number)."""
    samples = min(samples_a, samples_b)
    wrong_a, wrong_b = 1 - quality_a[:, :samples], 1 - quality_b[:, :samples]
    both = ~np.isnan(wrong_a) & ~np.isnan(wrong_b)
    rate_a = np.nanmean(np.where(both, wrong_a, np.nan), axis=1)
    rate_b = np.nanmean(np.where(both, wrong_b, np.nan), axis=1)
    rows = ~np.isnan(rate_a) & ~np.isnan(rate_b)
    correlation = float(np.corrcoef(rate_a[rows], rate_b[rows])[0, 1]) if rows.sum() > 2 else float("nan")
    p_a, p_b = float(wrong_a[both].mean()), float(wrong_b[both].mean())
    return {
        "error_rate_correlation_over_prompts": round(correlation, 4),
        "p_both_wrong": round(float((wrong_a[both] * wrong_b[both]).mean()), 4),
        "p_wrong_a_times_p_wrong_b": round(p_a * p_b, 4),
        "samples_compared": int(both.sum()),
    }


if __name__ == "__main__":
    main()
