"""`bestroute log export` memory and speed: decision logs of growing size (each request best of
three, with feedback), exported to routing data; peak Python memory (tracemalloc) must stay flat
in the number of rows. Prints the figures as one JSON object on its last line.

    python benchmarks/log_export.py [--rows 10000 100000] [--format parquet]
"""

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import yaml
from sqlalchemy import insert

from bestroute.serving import export_log, load_config
from bestroute.serving._log.database import open_database
from bestroute.serving._log.schema import calls, decisions, feedback

ANSWER = "The answer is 42. " * 20  # about 360 characters a response


def _fill(url: str, rows: int) -> None:
    engine = open_database(url)
    with engine.begin() as connection:
        for start in range(0, rows, 5000):
            ids = [f"chatcmpl-{i:09d}" for i in range(start, min(rows, start + 5000))]
            connection.execute(
                insert(decisions),
                [
                    {
                        "id": i,
                        "created_at": 1.0,
                        "prompt_hash": "h",
                        "prompt": f"question {i}: what is six times seven?",
                        "requested_model": "bestroute",
                        "option": "small x3",
                        "model": "small",
                        "n": 3,
                        "latency_ms": 1.0,
                        "prompt_tokens": 30,
                        "completion_tokens": 15,
                        "cost_usd": 1e-5,
                        "status": 200,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                insert(calls),
                [
                    {
                        "decision_id": i,
                        "attempt": 0,
                        "stage": 0,
                        "stage_label": "small x3",
                        "model": "small",
                        "first_sample": 0,
                        "samples": 3,
                        "requests": 3,
                        "input_tokens": 30,
                        "output_tokens": 15,
                        "sample_tokens": [5, 5, 5],
                        "cost_usd": 1e-5,
                        "latency_ms": 1.0,
                        "kept": 0,
                        "responses": [ANSWER, ANSWER, "7"],
                    }
                    for i in ids
                ],
            )
            connection.execute(insert(feedback), [{"decision_id": i, "quality": 1.0, "created_at": 1.0} for i in ids])
    engine.dispose()


def _export(directory: Path, rows: int, format: str) -> dict[str, float | int | str]:
    url = f"sqlite:///{directory}/log-{rows}.db"
    _fill(url, rows)
    config = directory / f"gateway-{rows}.yaml"
    config.write_text(
        yaml.safe_dump(
            {"backends": [{"name": "small", "base_url": "http://127.0.0.1:9/v1"}], "decision_log": {"url": url}}
        )
    )
    settings = load_config(config)
    tracemalloc.start()
    tic = time.perf_counter()
    prompts, responses, left_out = export_log(settings, directory / f"out-{rows}", format=format)
    seconds = time.perf_counter() - tic
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{rows} rows: {seconds:.1f} s, peak {peak / 2**20:.1f} MiB", file=sys.stderr)
    return {
        "format": format,
        "rows": rows,
        "prompts": prompts,
        "responses": responses,
        "left_out": left_out,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_mib": round(peak / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_export(Path(tmp), rows, args.format) for rows in args.rows]
    print(json.dumps({"runs": runs, "peak_ratio": round(runs[-1]["peak_mib"] / runs[0]["peak_mib"], 2)}))


if __name__ == "__main__":
    main()
