"""Router decision latency: one prompt of ~100 tokens on one core (embedding and the domain
guard included), and batched throughput. Prints the figures as one JSON object on the last line.

    python benchmarks/router_latency.py [--data ../shared/data/zeroeval]
"""

import os

# One core, one thread: set before numpy loads its BLAS.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[variable] = "1"
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bestroute import BestRouteRouter, load_dataset, split_prompts

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    data = load_dataset(args.data)
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="static").fit(data, split.train, split.val)
    knob = router.default_knob()
    tokenizer = router.extractor_._tokenizer
    lengths = np.array([len(tokenizer.encode(t, add_special_tokens=False).ids) for t in data.texts])
    # Prompts of about 100 tokens, as the target is stated.
    near_100 = [data.texts[i] for i in np.argsort(np.abs(lengths - 100))[:50]]

    def decide(texts: list[str]) -> None:  # as the gateway does: scores and the domain guard from one extraction
        assessed = router.assess(texts)
        router.decide(assessed, knob)

    for text in near_100[:20]:  # warm-up
        decide([text])
    single = []
    for r in range(args.repeats):
        text = near_100[r % len(near_100)]
        tic = time.perf_counter()
        decide([text])
        single.append((time.perf_counter() - tic) * 1000)
    batch = [data.texts[i] for i in split.test]
    tic = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        decide(batch)
    throughput = rounds * len(batch) / (time.perf_counter() - tic)
    print(
        json.dumps(
            {
                "router": "best-route",
                "features": router.extractor_.name,
                "options": len(router.options_),
                "prompt_tokens_mean": float(np.mean([lengths[data.texts.index(t)] for t in near_100])),
                "p50_ms_single": float(np.median(single)),
                "p99_ms_single": float(np.percentile(single, 99)),
                "batch_size": len(batch),
                "batch_prompts_per_s": float(throughput),
            }
        )
    )


if __name__ == "__main__":
    main()
