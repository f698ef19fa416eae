"""Training features on Ray: prompts/s of `features_batch` on a local Ray instance with 1 and 2
workers, against the in-process extractor over the same prompts in batches of the same size, on
a generated prompts table of zeroeval prompts; and the peak private memory of the driver and of
the Ray workers (`batch_route.measured`). Prints a JSON object per run and one with all of them.

    python benchmarks/batch_features.py [--prompts 200000] [--features static] [--batch-size 1024]
"""

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import ray
from batch_route import measured

from bestroute.batch import features_batch
from bestroute.features import make_extractor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--prompts", type=int, default=200_000)
    parser.add_argument("--features", default="static")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    texts = [json.loads(line)["prompt"] for line in (Path(args.data) / "prompts.jsonl").open()]
    work = Path(tempfile.mkdtemp(prefix="batch-features-"))
    (work / "data").mkdir()
    table = work / "data" / "prompts.jsonl"
    with table.open("w") as handle:
        for i in range(args.prompts):
            handle.write(json.dumps({"prompt_id": f"p{i}", "prompt": f"{texts[i % len(texts)]}\n#{i}"}) + "\n")
    extractor = make_extractor(args.features)

    def in_process() -> None:
        with table.open() as handle:
            while lines := list(itertools.islice(handle, args.batch_size)):
                extractor.transform([json.loads(line)["prompt"] for line in lines])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs = []
    for name, workers in (("in-process", 0), ("1 worker", 1), ("2 workers", 2)):

        def on_ray(workers: int = workers) -> None:
            report = features_batch(
                work / "data",
                work / f"out-{workers}",
                features=args.features,
                workers=workers,
                batch_size=args.batch_size,
            )
            assert report.prompts == args.prompts, report

        seconds, memory, _ = measured(in_process if workers == 0 else on_ray)
        runs.append(
            {
                "run": name,
                "prompts": args.prompts,
                "prompts_per_s": round(args.prompts / seconds),
                "peak_private_mb": memory,
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    ray.shutdown()
    print(json.dumps({"features": args.features, "batch_size": args.batch_size, "runs": runs}))


if __name__ == "__main__":
    main()
