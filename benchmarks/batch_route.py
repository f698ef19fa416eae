"""Batch routing throughput and memory: rows/s of `route_batch` on a local Ray instance with 1
and 2 workers, against the in-process `Router.route` streaming the same file in batches of the
same size, on generated JSONL of zeroeval prompts; and, sampled from /proc every 0.5 s, the peak
private memory (RssAnon) of the driver (this process) and of each kind of Ray worker process (the
routing actors, the reader, the writer), and the largest share of Ray's object store (shared
memory) any process maps, for each row count, so growth with the number of rows shows. Prints a
JSON object per run and one with all of them.

    python benchmarks/batch_route.py [--rows 100000 1000000] [--one-worker-rows 100000]
                                     [--in-process-rows 100000] [--batch-size 1024]

``--rows`` with no counts skips the two-worker runs, a count of 0 the one-worker or in-process run.
"""

import argparse
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray

from bestroute import ROUTERS, load_dataset, load_router, split_prompts
from bestroute.batch import route_batch

ROOT = Path(__file__).resolve().parents[1]


def _memory_mb(pid: str) -> tuple[str, float, float] | None:
    """(process kind, private MB, shared MB) of a Ray worker process or this one; None otherwise."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if not title.startswith("ray::") and int(pid) != os.getpid():
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("Rss")}
    kind = title[5:].split("(")[0].split(".")[0] if title.startswith("ray::") else "driver"
    return kind, fields.get("RssAnon", 0.0), fields.get("RssShmem", 0.0)


WANTED = ("driver", "MapWorker", "ReadJsonLines", "ReadPrompts", "Write", "object_store_shared")


def measured(run: Callable[[], None]) -> tuple[float, dict[str, int], dict[str, list[int]]]:
    """Seconds ``run`` takes, and memory meanwhile: the peak private MB per process kind and the
    largest shared (object store) MB of any process, over the whole run and in each tenth of its
    time (whether memory grows as the rows go by)."""
    samples: list[tuple[float, str, float]] = []
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not done.wait(0.5):
            now = time.perf_counter() - started
            for entry in Path("/proc").iterdir():
                found = _memory_mb(entry.name) if entry.name.isdigit() else None
                if found is not None:
                    kind, private, shared = found
                    samples.extend([(now, kind, private), (now, "object_store_shared", shared)])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peaks: dict[str, float] = {}
    tenths: dict[str, list[float]] = {}
    for at, kind, mb in samples:
        if kind in WANTED:
            peaks[kind] = max(peaks.get(kind, 0.0), mb)
            tenth, i = tenths.setdefault(kind, [0.0] * 10), min(9, int(10 * at / seconds))
            tenth[i] = max(tenth[i], mb)
    return seconds, {k: round(v) for k, v in peaks.items()}, {k: [round(v) for v in t] for k, t in tenths.items()}


def write_rows(path: Path, texts: list[str], rows: int) -> None:
    with path.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": i, "prompt": f"{texts[i % len(texts)]}\n#{i}"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zeroeval"))
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="two-worker runs")
    parser.add_argument("--one-worker-rows", type=int, default=100_000, help="0: no one-worker run")
    parser.add_argument("--in-process-rows", type=int, default=100_000, help="0: no in-process run")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--router", default="best-route")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-route-"))
    data = load_dataset(args.data)
    split = split_prompts(data.prompt_ids)
    artifact = work / "router.bestroute"
    ROUTERS[args.router](features="static").fit(data, split.train, split.val).save(artifact)
    router = load_router(artifact)
    plan = [("in-process", args.in_process_rows), ("1 worker", args.one_worker_rows)]
    plan += [("2 workers", rows) for rows in args.rows]
    plan = [(name, rows) for name, rows in plan if rows > 0]
    if any(name != "in-process" for name, _ in plan):  # an idle Ray instance would share the in-process run's cores
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs = []
    for name, rows in plan:
        source = work / f"rows-{rows}.jsonl"
        if not source.exists():
            write_rows(source, data.texts, rows)

        def in_process(source: Path = source) -> None:
            with source.open() as handle:
                while lines := list(itertools.islice(handle, args.batch_size)):
                    router.route([json.loads(line)["prompt"] for line in lines])

        def batch(workers: int = 1 if name == "1 worker" else 2, source: Path = source, rows: int = rows) -> None:
            out = work / f"out-{rows}-{workers}"
            report = route_batch(artifact, source, out, workers=workers, batch_size=args.batch_size)
            assert report.routed == rows, report

        seconds, memory, by_tenth = measured(in_process if name == "in-process" else batch)
        runs.append(
            {
                "run": name,
                "rows": rows,
                "rows_per_s": round(rows / seconds),
                "peak_private_mb": memory,
                "peak_mb_by_tenth_of_time": by_tenth,
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    if ray.is_initialized():
        ray.shutdown()
    print(json.dumps({"batch_size": args.batch_size, "router": args.router, "runs": runs}))


if __name__ == "__main__":
    main()
