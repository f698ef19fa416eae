"""The out-of-domain guard on the zeroeval data: a router is trained on one task only (GSM8K or
CRUXEval: its train split, the guard calibrated on its validation split), then reads every prompt
of the other task (how many are flagged: should be all) and its own task's test prompts (how
many are flagged wrongly: should be about 1 - the guard's quantile). Five split seeds, both
directions. Prints the figures as one JSON object on the last line.

    python benchmarks/domain_guard.py [--data ../shared/data/zeroeval] [--features static] [--quantile 0.995]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from bestroute import BestRouteRouter, load_dataset, split_prompts
from bestroute.features import DOMAIN_QUANTILE, make_extractor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--features", default="static")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quantile", type=float, default=DOMAIN_QUANTILE, help="the guard's validation quantile")
    args = parser.parse_args()
    data = load_dataset(args.data)
    extractor = make_extractor(args.features)
    x = extractor.transform(data.texts)  # once: every fit below reads these rows
    tasks = np.array(data.tasks)
    names = sorted({str(t) for t in data.tasks})
    results: dict[str, dict[str, object]] = {}
    for trained in names:
        unseen_flagged, test_flagged = [], []
        for seed in range(args.seeds):
            split = split_prompts(data.prompt_ids, seed=seed)
            train, val, test = (rows[tasks[rows] == trained] for rows in (split.train, split.val, split.test))
            router = BestRouteRouter(features=args.features, seed=seed, max_n=1, domain_quantile=args.quantile)
            router.fit(data, train, val, features=x, extractor=extractor)
            assert router.domain_ is not None
            # what Router.assess flags, on the rows' features made once
            flags = router.domain_.out_of_domain(x[tasks != trained])
            own = router.domain_.out_of_domain(x[test])
            unseen_flagged.append(float(flags.mean()))
            test_flagged.append(float(own.mean()))
        results[f"trained on {trained}"] = {
            "unseen_task": next(n for n in names if n != trained),
            "unseen_prompts": int((tasks != trained).sum()),
            "unseen_flagged": [round(v, 4) for v in unseen_flagged],
            "unseen_flagged_mean": round(float(np.mean(unseen_flagged)), 4),
            "own_test_flagged": [round(v, 4) for v in test_flagged],
            "own_test_flagged_mean": round(float(np.mean(test_flagged)), 4),
        }
    print(
        json.dumps({"features": args.features, "quantile": args.quantile, "seeds": args.seeds, "directions": results})
    )


if __name__ == "__main__":
    main()
