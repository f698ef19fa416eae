"""BEST-Route over (model, strategy, n) against the same router restricted to one strategy per
model (issue 21, item 4), on the sets `scripts/strategy_sets.py` writes, as JSON.

    python scripts/strategy_auc.py --sets OUT [--seeds 0 1 2 3 4] [--reference gemma3-270m]

Every set is evaluated on each seed's split (the same prompts: the split hashes prompt ids), and
each router's test curve is scored on one cost axis, the `all` set's (from its cheapest arm to
its reference), so the areas are comparable; each set's own AUC, on its own axis, is given too.
A restricted set's reference is its own arm of the reference model.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from bestroute.data import arm_name, load_dataset
from bestroute.evaluation import evaluate
from bestroute.evaluation._metrics import area_under_curve
from bestroute.features import DOMAIN_QUANTILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reference", default="gemma3-270m", help="the reference model (as sent in `all`)")
    parser.add_argument("--no-guard", action="store_true", help="routers without the out-of-domain guard")
    args = parser.parse_args()
    names = ["all"] + sorted(p.name for p in args.sets.iterdir() if p.name.startswith("only-"))
    table: dict[str, dict[str, list[float]]] = {name: {"auc_common_axis": [], "auc_own_axis": []} for name in names}
    for seed in args.seeds:
        axis = None
        for name in names:
            data = load_dataset(args.sets / name)
            strategy = name.removeprefix("only-")
            reference = (
                args.reference
                if name == "all"
                else arm_name(args.reference, None if strategy == "as-sent" else strategy)
            )
            results = evaluate(
                data,
                routers=["best-route"],
                seed=seed,
                reference=reference,
                selector="consensus",
                domain_quantile=None if args.no_guard else DOMAIN_QUANTILE,
            )
            entry = results["routers"]["best-route"]
            if axis is None:  # the `all` set's axis, for every set of this seed
                axis = (results["reference"]["cheapest_cost_per_1k"], results["reference"]["cost_per_1k"])
            points = np.array(entry["curve"], dtype=float)[:, :2]
            table[name]["auc_common_axis"].append(
                area_under_curve(points, cheapest_cost=axis[0], reference_cost=axis[1])
            )
            table[name]["auc_own_axis"].append(entry["auc"])
    summary = {
        name: {k: [round(v, 4) for v in values] for k, values in columns.items()}
        | {"mean_auc_common_axis": round(float(np.mean(columns["auc_common_axis"])), 4)}
        for name, columns in table.items()
    }
    print(json.dumps({"seeds": args.seeds, "sets": summary}, indent=2))


if __name__ == "__main__":
    main()
