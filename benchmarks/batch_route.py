"""Batch routing throughput: rows/s of `route_batch` on a local Ray instance with 1 and 2
workers, against the in-process `Router.route` in batches of the same size, on a generated JSONL
of zeroeval prompts; and peak resident memory: this process's (the in-process pass included) and
the largest of its waited-for descendants' (Ray's processes, as far as getrusage sees them; not
yet a per-worker reading). Prints one JSON object.

    python benchmarks/batch_route.py [--rows 200000] [--batch-size 1024] [--router best-route]
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import ray

from bestroute import ROUTERS, load_dataset, load_router, split_prompts
from bestroute.batch import route_batch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--router", default="best-route")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-route-"))
    data = load_dataset(args.data)
    split = split_prompts(data.prompt_ids)
    artifact = work / "router.bestroute"
    ROUTERS[args.router](features="static").fit(data, split.train, split.val).save(artifact)
    source = work / "rows.jsonl"
    with source.open("w") as handle:
        for i in range(args.rows):
            handle.write(json.dumps({"id": i, "prompt": f"{data.texts[i % len(data.texts)]}\n#{i}"}) + "\n")
    router = load_router(artifact)
    started = time.perf_counter()
    texts = [json.loads(line)["prompt"] for line in source.open()]
    for start in range(0, len(texts), args.batch_size):
        router.route(texts[start : start + args.batch_size])
    result: dict[str, object] = {
        "rows": args.rows,
        "in_process_rows_per_s": round(args.rows / (time.perf_counter() - started)),
    }
    del texts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for workers in (1, 2):
        started = time.perf_counter()
        report = route_batch(artifact, source, work / f"out-{workers}", workers=workers, batch_size=args.batch_size)
        assert report.routed == args.rows, report
        result[f"workers_{workers}_rows_per_s"] = round(args.rows / (time.perf_counter() - started))
    ray.shutdown()
    result["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["largest_descendant_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
