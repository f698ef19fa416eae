"""Dashboard page times over a large decision log: a generated log (by default 1,000,000
requests over 30 days, a call each and a second for the escalated ones, shadow checks and
feedback for a few), written as the gateway's writer writes it (rows and rollups), in SQLite and
in PostgreSQL (pgserver), served by `bestroute serve`; each
page fetched ``--repeats`` times over HTTP with the admin key. Prints p50 and p95 per page and
database as one JSON object on its last line.

    python benchmarks/dashboard_pages.py [--rows 1000000] [--days 30] [--repeats 20] [--no-postgres]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from gateway_overhead import free_port, synthetic_router, wait_for

from bestroute.serving._log.database import open_database
from bestroute.serving._log.rollup import insert_rows
from bestroute.serving._log.schema import calls, decisions, feedback, shadows

OPTIONS = [("small", 1, "small"), ("small x3", 3, "small"), ("small x3 → big", 3, "small"), ("big", 1, "big")]
CHUNK = 20_000
ADMIN_KEY = "benchmark-admin-key"


def fill(url: str, rows: int, days: float, now: float) -> None:
    """``rows`` decisions spread evenly over the ``days`` before ``now``, with their calls."""
    engine = open_database(url)
    rng = random.Random(0)
    start = now - days * 86400
    step = days * 86400 / rows
    for first in range(0, rows, CHUNK):
        batch, batch_calls, batch_shadows, batch_feedback = [], [], [], []
        for i in range(first, min(rows, first + CHUNK)):
            option, n, model = OPTIONS[rng.randrange(len(OPTIONS))]
            failed = rng.random() < 0.02
            escalated = "→" in option and rng.random() < 0.3
            cost = 0.0 if failed else (0.0002 * n + (0.002 if escalated or model == "big" else 0.0))
            decision_id = f"chatcmpl-{i:09d}"
            batch.append(
                {
                    "id": decision_id,
                    "created_at": start + i * step,
                    "prompt_hash": f"{i % 50_000:064x}",
                    "requested_model": "bestroute",
                    "option": None if failed else option,
                    "model": None if failed else ("big" if escalated else model),
                    "n": None if failed else n,
                    "threshold": 0.9,
                    "scores": {o[0]: round(rng.random(), 3) for o in OPTIONS},
                    "fallbacks": [],
                    "latency_ms": rng.lognormvariate(4, 0.8),
                    "prompt_tokens": 40,
                    "completion_tokens": 20 * n,
                    "cost_usd": cost,
                    "status": 502 if failed else 200,
                    "error": "all upstreams failed" if failed else None,
                    "client_key_id": f"{rng.randrange(20):016x}",
                    "escalated": int(escalated) if "→" in option else None,
                    "confidence": rng.random() if "→" in option else None,
                    "reference_cost_usd": None if failed else 0.0021,
                }
            )
            for stage, (called, samples) in enumerate([(model, n)] + ([("big", 1)] if escalated else [])):
                batch_calls.append(
                    {
                        "decision_id": decision_id,
                        "attempt": 0,
                        "stage": stage,
                        "stage_label": called,
                        "model": called,
                        "first_sample": 0,
                        "samples": samples,
                        "requests": 1,
                        "input_tokens": 40,
                        "output_tokens": 20 * samples,
                        "sample_tokens": [20] * samples,
                        "cost_usd": cost / (2 if escalated else 1),
                        "latency_ms": 30.0,
                        "error": "upstream 500" if failed else None,
                        "kept": None if failed else 0,
                    }
                )
            if not failed and model != "big" and rng.random() < 0.05:
                batch_shadows.append(
                    {
                        "decision_id": decision_id,
                        "created_at": start + i * step + 1,
                        "option": option,
                        "against": "big",
                        "agreed": int(rng.random() < 0.9),
                        "cost_usd": 0.002,
                        "latency_ms": 40.0,
                    }
                )
            if not failed and rng.random() < 0.02:
                batch_feedback.append(
                    {
                        "decision_id": decision_id,
                        "quality": float(rng.random() < 0.8),
                        "created_at": start + i * step + 5,
                    }
                )
        written = [(decisions, r) for r in batch] + [(calls, r) for r in batch_calls]
        written += [(shadows, r) for r in batch_shadows] + [(feedback, r) for r in batch_feedback]
        with engine.begin() as connection:
            insert_rows(connection, written)  # as the gateway's writer does: the rows and their rollups
    engine.dispose()


def pages(rows: int) -> dict[str, str]:
    last = f"chatcmpl-{rows - 1:09d}"
    return {
        "overview 24h": "/dashboard?range=24h",
        "overview 7d": "/dashboard?range=7d",
        "overview 30d": "/dashboard?range=30d",
        "overview all": "/dashboard?range=all",
        "options 24h": "/dashboard/options?range=24h",
        "options 30d": "/dashboard/options?range=30d",
        "decisions": "/dashboard/decisions?range=30d",
        "decisions filtered": "/dashboard/decisions?range=30d&model=big&escalated=yes&client_key=0000000000000003",
        "decisions rare filter": "/dashboard/decisions?range=30d&status=502&client_key=0000000000000007",
        "decision": f"/dashboard/decisions/{last}",
        "backends": "/dashboard/backends",
    }


def measure(url: str, directory: Path, rows: int, repeats: int) -> dict[str, dict[str, float]]:
    config = {
        "router": str(synthetic_router(directory)),
        "backends": [
            {"name": "small", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "big", "base_url": "http://127.0.0.1:9/v1"},
        ],
        "decision_log": {"url": url, "dead_letter_path": str(directory / "dead.jsonl")},
        "admin": {"api_keys_env": "BENCH_ADMIN_KEYS"},
        "reload_poll_s": 0,
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = os.environ | {"BENCH_ADMIN_KEYS": ADMIN_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "bestroute", "serve", "--config", str(path), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    found: dict[str, dict[str, float]] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", process)
        with httpx.Client(base_url=base, timeout=120, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
            for name, page in pages(rows).items():
                times = []
                for _ in range(repeats + 1):
                    began = time.perf_counter()
                    response = client.get(page)
                    times.append((time.perf_counter() - began) * 1000)
                    response.raise_for_status()
                times = times[1:]  # the first fetch warms the database's cache
                found[name] = {
                    "p50_ms": round(float(np.percentile(times, 50)), 1),
                    "p95_ms": round(float(np.percentile(times, 95)), 1),
                }
                print(name, found[name], file=sys.stderr)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    now = time.time()
    result: dict[str, object] = {"rows": args.rows, "days": args.days, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        urls = {"sqlite": f"sqlite:///{directory}/decisions.db"}
        server = None
        if not args.no_postgres:
            import pgserver

            server = pgserver.get_server(directory / "postgres", cleanup_mode="stop")
            urls["postgresql"] = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            for name, url in urls.items():
                began = time.perf_counter()
                fill(url, args.rows, args.days, now)
                print(f"{name}: {args.rows} rows written in {time.perf_counter() - began:.0f} s", file=sys.stderr)
                (directory / name).mkdir()
                result[name] = measure(url, directory / name, args.rows, args.repeats)
        finally:
            if server is not None:
                server.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
