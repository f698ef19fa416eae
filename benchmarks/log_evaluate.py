"""`bestroute log evaluate` at scale: decision logs of growing size (routed requests that explored,
with stored prompts, feedback on a third and a shadow check on a fifth), each candidate decision
made again and estimated off-policy a page at a time; peak Python memory (tracemalloc) must stay
flat in the number of rows. Prints the figures as one JSON object on its last line.

    python benchmarks/log_evaluate.py [--rows 100000 1000000]
"""

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import yaml
from gateway_overhead import synthetic_router
from sqlalchemy import insert

from bestroute.serving import evaluate_log, load_config
from bestroute.serving._log.database import open_database
from bestroute.serving._log.schema import decisions, feedback, shadows

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT.parent / "shared" / "data" / "zeroeval" / "prompts.jsonl"


def _fill(url: str, rows: int, texts: list[str]) -> None:
    """``rows`` routed requests: the logging policy planned small or big (big on a quarter, the
    explored share), each answered by what it planned, at that plan's propensity."""
    rng = np.random.default_rng(0)
    engine = open_database(url)
    with engine.begin() as connection:
        for start in range(0, rows, 5000):
            ids = range(start, min(rows, start + 5000))
            planned = np.where(rng.random(len(ids)) < 0.25, "big", "small")
            connection.execute(
                insert(decisions),
                [
                    {
                        "id": f"chatcmpl-{i:09d}",
                        "created_at": 1.0,
                        "prompt_hash": "h",
                        "prompt": f"{texts[i % len(texts)]}\n(request {i})",
                        "requested_model": "bestroute",
                        "option": str(plan),
                        "planned_option": str(plan),
                        "router_choice": "small",
                        "propensity": 0.25 if plan == "big" else 0.75,
                        "threshold": 0.5,
                        "model": str(plan),
                        "n": 1,
                        "latency_ms": 1.0,
                        "prompt_tokens": 30,
                        "completion_tokens": 15,
                        "cost_usd": 2e-4 if plan == "big" else 1e-5,
                        "status": 200,
                    }
                    for i, plan in zip(ids, planned, strict=True)
                ],
            )
            connection.execute(
                insert(feedback),
                [
                    {"decision_id": f"chatcmpl-{i:09d}", "quality": float(rng.random() < 0.8), "created_at": 1.0}
                    for i in ids
                    if i % 3 == 0
                ],
            )
            connection.execute(
                insert(shadows),
                [
                    {
                        "decision_id": f"chatcmpl-{i:09d}",
                        "created_at": 1.0,
                        "option": "small",
                        "against": "big",
                        "agreed": int(rng.random() < 0.85),
                        "cost_usd": 2e-4,
                        "latency_ms": 1.0,
                    }
                    for i in ids
                    if i % 5 == 1
                ],
            )
    engine.dispose()


def _evaluate(directory: Path, artifact: Path, rows: int, texts: list[str]) -> dict[str, float | int]:
    url = f"sqlite:///{directory}/log-{rows}.db"
    tic = time.perf_counter()
    _fill(url, rows, texts)
    filled = time.perf_counter() - tic
    config = directory / f"gateway-{rows}.yaml"
    backends = [{"name": name, "base_url": "http://127.0.0.1:9/v1"} for name in ("small", "big")]
    config.write_text(yaml.safe_dump({"router": str(artifact), "backends": backends, "decision_log": {"url": url}}))
    settings = load_config(config)
    tracemalloc.start()
    tic = time.perf_counter()
    found = evaluate_log(settings, str(artifact))
    seconds = time.perf_counter() - tic
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{rows} rows: filled in {filled:.0f} s, evaluated in {seconds:.1f} s, peak {peak / 2**20:.1f} MiB",
        file=sys.stderr,
    )
    return {
        "rows": rows,
        "evaluated_rows": found.rows,
        "labelled": found.labelled,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_mib": round(peak / 2**20, 2),
        "snips_quality": round(found.quality.snips.value, 4),
        "snips_quality_interval": [round(found.quality.snips.lower, 4), round(found.quality.snips.upper, 4)],
        "effective_size": round(found.quality.effective_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    texts = [json.loads(line)["prompt"] for line in PROMPTS.open()]
    with tempfile.TemporaryDirectory() as tmp:
        artifact = synthetic_router(Path(tmp))
        runs = [_evaluate(Path(tmp), artifact, rows, texts) for rows in args.rows]
    print(json.dumps({"runs": runs, "peak_ratio": round(runs[-1]["peak_mib"] / runs[0]["peak_mib"], 2)}))


if __name__ == "__main__":
    main()
