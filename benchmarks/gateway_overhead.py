"""Gateway overhead: latency the gateway adds over calling a fast local upstream directly, at a
fixed request rate, and best-of-5 wall time against one sample on an upstream that serves
requests concurrently, and chat latency while clients post feedback on ids no replica answered
(each looked up in the database for about a second), the gateway's CPU per request against a
bare pass-through proxy on the same server stack (its floor), and /healthz latency while routed best-of-5
requests with 50 KB answers (judged by consensus) and 1 MB prompts are in flight. Prints the
figures as one JSON object on its last line.

    python benchmarks/gateway_overhead.py [--rate 200] [--seconds 30] [--blocks 6] [--no-pin]
                                          [--feedback-rate 50] [--heavy-seconds 20] [--shadow-rate 0.1]
                                          [--workers 2] [--floor-seconds 10]
                                          [--prompts ../shared/data/zeroeval/prompts.jsonl]

Three processes on loopback: the upstream (a minimal OpenAI-compatible server), the gateway
(`bestroute serve`, routing every request with a BEST-Route artifact) and this load generator.
"""

import argparse
import asyncio
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

try:
    import uvloop
except ImportError:  # uvicorn[standard] brings it; without it the standard loop is used
    uvloop = None

BODY = {"messages": [{"role": "user", "content": "What is six times seven? Answer with a number."}]}


def serve_upstream(port: int, delay_s: float, answer_bytes: int = 0) -> None:
    """The upstream: answers every chat completion after ``delay_s``, concurrently; with
    ``answer_bytes``, each choice is a different text of about that size."""
    import uvicorn
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        n = int(body.get("n", 1))
        texts = [_long_answer(i, answer_bytes) if answer_bytes else "42" for i in range(n)]
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i, text in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n},
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def serve_floor(port: int, upstream_port: int) -> None:
    """The floor of the gateway's stack: the same server (uvicorn with httptools and uvloop,
    FastAPI, no access log) and the same upstream client (one aiohttp session), forwarding each
    chat completion unchanged and doing nothing else: no routing, no record, no decision log."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    upstream = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        yield
        await sessions[0].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        async with sessions[0].post(upstream, json=body | {"model": "small"}) as response:
            return JSONResponse(await response.json(), status_code=response.status)

    @app.get("/")
    async def root() -> dict:
        return {}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, loop="uvloop", http="httptools")


def _floor_phase(
    processes: list[subprocess.Popen], upstream_port: int, gateway_url: str, rate: float, seconds: float, *, pin: bool
) -> dict[str, float | None]:
    """CPU per request of the gateway and of a pass-through proxy on the same stack
    (``serve_floor``), at the same rate, each pinned to the gateway's core in turn."""
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port), "--upstream-port", str(upstream_port)]
    )
    processes.append(proxy)
    wait_for(f"http://127.0.0.1:{port}/", proxy)
    if pin:
        _pin([*processes[:2], proxy])
    figures: dict[str, float | None] = {}
    for name, url, pid in (
        ("floor", f"http://127.0.0.1:{port}/v1/chat/completions", proxy.pid),
        ("gateway", gateway_url, processes[2].pid),
    ):
        asyncio.run(_load(url, "bestroute:0", rate, 2))  # warm-up
        latencies, errors, figures[f"{name}_cpu_ms_per_request"] = _load_with_cpu(url, rate, seconds, pid)
        figures[f"{name}_cpu_phase_p50_ms"] = float(np.percentile(latencies, 50))
        figures[f"{name}_cpu_phase_errors"] = errors
    print(
        f"CPU per request at {rate:g}/s: pass-through floor {figures['floor_cpu_ms_per_request']:.2f} ms, "
        f"gateway {figures['gateway_cpu_ms_per_request']:.2f} ms",
        file=sys.stderr,
    )
    return figures


def _long_answer(seed: int, size: int) -> str:
    """About ``size`` bytes of words, different for each seed, ending in a final answer."""
    words = [f"w{(seed * 7919 + k * 104729) % 5000}" for k in range(size // 6)]
    return " ".join(words) + f" The answer is {seed % 2}."


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _pin(processes: list[subprocess.Popen]) -> None:
    """The gateway gets a core of its own, as it would in production; the upstreams and this load
    generator share the other, in both phases. Unpinned, where the scheduler happens to put the
    three processes moves each run's percentiles by a millisecond."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return
    *upstreams, gateway = processes
    os.sched_setaffinity(gateway.pid, {cores[-1]})
    for process in upstreams:
        os.sched_setaffinity(process.pid, set(cores[:-1]))
    os.sched_setaffinity(0, set(cores[:-1]))


def synthetic_router(directory: Path, *, samples: int = 1) -> Path:
    """A BEST-Route artifact over models 'small' and 'big' from a small synthetic dataset. With
    ``samples`` > 1, small has that many samples a prompt and only its best-of-``samples``
    option is served (so every routed request draws them and judges them)."""
    import numpy as np_

    from bestroute import BestRouteRouter, load_dataset, split_prompts

    data_dir = directory / f"data-{samples}"
    data_dir.mkdir()
    prompts, responses = [], []
    for i in range(200):
        prompts.append({"prompt_id": f"p{i}", "prompt": f"question {i} about {'math' if i % 2 else 'code'}"})
        for model, quality in (("small", float(i % 3 != 0)), ("big", 1.0)):
            for sample in range(samples if model == "small" else 1):
                responses.append(
                    {
                        "prompt_id": f"p{i}",
                        "model": model,
                        "sample": sample,
                        "quality": quality,
                        "input_tokens": 12,
                        "output_tokens": 1,
                    }
                )
    (data_dir / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    with gzip.open(data_dir / "responses.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in responses)
    (data_dir / "models.json").write_text(
        json.dumps(
            {
                "models": {
                    "small": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
                    "big": {"input_usd_per_mtok": 5, "output_usd_per_mtok": 15},
                }
            }
        )
    )
    data = load_dataset(data_dir)
    split = split_prompts(data.prompt_ids)
    path = directory / f"router-{samples}.bestroute"
    router = BestRouteRouter(features="auto", max_n=samples, prune_dominated=False).fit(data, split.train, split.val)
    if samples > 1:
        router.active_ = np_.array([o.n == samples or o == router.reference_ for o in router.options_])
        router.option_cost_[[o.n == samples for o in router.options_]] = 0.0  # the cheapest: always chosen
    router.save(path)
    return path


async def _healthz_under_load(
    health_url: str, chat_url: str, seconds: float, *, answers: int, prompts: int
) -> tuple[list[float], int, int]:
    """/healthz latencies (20 a second) while ``answers`` clients send routed requests that draw
    best-of-5 50 KB answers and ``prompts`` clients send 990 KB prompts, back to back. Returns
    the latencies, heavy requests completed and heavy requests that failed."""
    done = failed = 0
    stop = time.perf_counter() + seconds
    huge = "Summarise this text. " + "lorem ipsum dolor sit amet " * 36_600
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def heavy(text: str) -> None:
            nonlocal done, failed
            body = {"model": "bestroute:0", "messages": [{"role": "user", "content": text}]}
            while time.perf_counter() < stop:
                async with session.post(chat_url, json=body) as response:
                    await response.read()
                    done, failed = done + 1, failed + (response.status != 200)

        async def probe() -> list[float]:
            latencies = []
            while time.perf_counter() < stop:
                tic = time.perf_counter()
                async with session.get(health_url) as response:
                    await response.read()
                latencies.append((time.perf_counter() - tic) * 1000)
                await asyncio.sleep(0.05)
            return latencies

        clients = [heavy(BODY["messages"][0]["content"]) for _ in range(answers)] + [
            heavy(huge) for _ in range(prompts)
        ]
        latencies, *_ = await asyncio.gather(probe(), *clients)
    return latencies, done, failed


async def _load(
    url: str, model: str, rate: float, seconds: float, prompts: list[str] | None = None, offset: int = 0
) -> tuple[list[float], int]:
    """Open-loop load: request i is sent at start + i / rate whatever the earlier ones do, with
    BODY's prompt or ``prompts[(offset + i) % len(prompts)]``. aiohttp keeps the generator's own
    CPU small: it shares the two cores with both servers."""
    latencies: list[float] = []
    errors = 0
    payloads = [
        json.dumps(BODY | {"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()
        for prompt in prompts or [BODY["messages"][0]["content"]]
    ]
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def one(payload: bytes) -> None:
            nonlocal errors
            tic = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
                return
            latencies.append((time.perf_counter() - tic) * 1000)

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[(offset + i) % len(payloads)])))
        await asyncio.gather(*tasks)
    return latencies, errors


async def _feedback_load(url: str, rate: float, seconds: float) -> int:
    """Feedback on ids no replica answered, at ``rate``: each is looked up in the database for
    about a second before its 404. Returns how many got anything but a 404."""
    unexpected = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            nonlocal unexpected
            async with session.post(url, json={"id": f"unknown-{i}", "quality": 1.0}) as response:
                await response.read()
                unexpected += response.status != 404

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return unexpected


async def _with_feedback(
    gateway_url: str, feedback_url: str, rate: float, feedback_rate: float, seconds: float
) -> tuple[list[float], int, int]:
    (latencies, errors), unexpected = await asyncio.gather(
        _load(gateway_url, "bestroute:0", rate, seconds), _feedback_load(feedback_url, feedback_rate, seconds)
    )
    return latencies, errors, unexpected


LADDER = (300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500, 1750, 2000, 2500, 3000)


def _max_rps(url: str, seconds: float, gateway_pid: int | None = None) -> tuple[float | None, float | None]:
    """The highest of a rising ladder of rates the gateway sustains for ``seconds`` with
    p99 < 50 ms and no errors (None if the lowest fails), and the gateway's CPU time per request
    at that rate (milliseconds, over its processes; with ``gateway_pid``). The load generator
    shares the cores with the upstream, so near the top it measures them too; each step's
    figures go to stderr."""
    best = cpu_ms = None
    for rate in LADDER:
        latencies, errors, used = _load_with_cpu(url, rate, seconds, gateway_pid)
        p99 = float(np.percentile(latencies, 99)) if latencies else float("inf")
        cpu = f", gateway CPU {used:.2f} ms a request" if used is not None else ""
        print(f"max-rps search: {rate}/s -> p99 {p99:.1f} ms, {errors} errors{cpu}", file=sys.stderr)
        if p99 >= 50 or errors:
            break
        best, cpu_ms = float(rate), used
    return best, cpu_ms


def _load_with_cpu(url: str, rate: float, seconds: float, pid: int | None) -> tuple[list[float], int, float | None]:
    """``_load`` through the gateway, and the CPU time (ms) per answered request of ``pid`` and
    its descendants meanwhile (None without ``pid``)."""
    before = _cpu_s(pid) if pid else 0.0
    latencies, errors = asyncio.run(_load(url, "bestroute:0", rate, seconds))
    used = (_cpu_s(pid) - before) * 1000 / max(len(latencies), 1) if pid else None
    return latencies, errors, used


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError):
        return total
    return total + sum(_cpu_s(int(child)) for child in children)


def _workers_phase(
    directory: Path, config: dict, processes: list[subprocess.Popen], single_url: str, workers: int, seconds: float
) -> dict[str, float | int | None]:
    """The same rate ladder against the one-worker gateway (``processes[2]``, at ``single_url``)
    and a second gateway with ``workers`` worker processes, every process free to run on any core."""
    everywhere = set(range(os.cpu_count() or 1))
    for pid in (0, *(p.pid for p in processes if p.poll() is None)):
        os.sched_setaffinity(pid, everywhere)
    port = free_port()
    config = config | {"decision_log": {"url": f"sqlite:///{directory}/workers.db"}}
    (directory / "workers.yaml").write_text(yaml.safe_dump(config))
    group = subprocess.Popen(
        [
            "bestroute",
            "serve",
            "--config",
            str(directory / "workers.yaml"),
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/", group)
        time.sleep(3)  # every worker up
        group_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(_load(group_url, "bestroute:0", 300, 2))  # warm-up
        print("one worker, unpinned:", file=sys.stderr)
        one, one_cpu = _max_rps(single_url, seconds, processes[2].pid)
        print(f"{workers} workers:", file=sys.stderr)
        many, many_cpu = _max_rps(group_url, seconds, group.pid)
    finally:
        group.terminate()
        group.wait(timeout=60)
    return {
        "workers": workers,
        "max_rps_1_worker_unpinned": one,
        "gateway_cpu_ms_per_request_1_worker": one_cpu,
        f"max_rps_{workers}_workers": many,
        f"gateway_cpu_ms_per_request_{workers}_workers": many_cpu,
        "requests_per_gateway_core_s": 1000 / many_cpu if many_cpu else None,
    }


async def _wall(url: str, body: dict, repeats: int) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            async with session.post(url, json=body, raise_for_status=True) as response:
                await response.read()
            times.append(time.perf_counter() - tic)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase (direct, through the gateway)")
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks each phase is cut into")
    parser.add_argument("--no-pin", action="store_true", help="leave the processes wherever the scheduler puts them")
    parser.add_argument(
        "--max-rps-seconds",
        type=float,
        default=5.0,
        help="per step of the search for the highest rate with p99 < 50 ms and no errors (0: skip)",
    )
    parser.add_argument(
        "--feedback-rate",
        type=float,
        default=50.0,
        help="feedback calls/s on unknown ids in a last phase through the gateway (0: none)",
    )
    parser.add_argument(
        "--heavy-seconds",
        type=float,
        default=20.0,
        help="/healthz probed while best-of-5 50 KB answers and 1 MB prompts are in flight (0: skip)",
    )
    parser.add_argument(
        "--shadow-rate",
        type=float,
        default=0.0,
        help="share of routed answers shadow-checked against the 0.2 s upstream (the gateway's shadow.rate)",
    )
    parser.add_argument(
        "--guard", choices=["reference", "flag", "off"], default="reference", help="the gateway's guard.out_of_domain"
    )
    parser.add_argument("--no-affinity", action="store_true", help="affinity.enabled false")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="above 1: a last phase, the max-rps ladder for the one-worker gateway and one with this many workers",
    )
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=10.0,
        help="CPU per request of the gateway and of a bare pass-through proxy on the same stack (0: skip)",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="a JSONL file of prompts (its 'prompt' fields) the direct and gateway phases send in turn "
        "(default: one prompt, BODY's)",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--answer-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.delay, args.answer_bytes)
        return
    if args.serve_floor:
        serve_floor(args.serve_floor, args.upstream_port)
        return
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        try:
            fast_port, slow_port, gateway_port = free_port(), free_port(), free_port()
            for port, delay in ((fast_port, 0.0), (slow_port, 0.2)):
                processes.append(
                    subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port), "--delay", str(delay)])
                )
            config = {
                "router": str(synthetic_router(directory)),
                "backends": [
                    {"name": "small", "base_url": f"http://127.0.0.1:{fast_port}/v1"},
                    {"name": "big", "base_url": f"http://127.0.0.1:{fast_port}/v1"},
                    {"name": "slow", "base_url": f"http://127.0.0.1:{slow_port}/v1", "max_n": 5},
                ],
                "decision_log": {"url": f"sqlite:///{directory}/decisions.db"},
                "shadow": {"rate": args.shadow_rate, "against": "slow"},
                "guard": {"out_of_domain": args.guard},
                "affinity": {"enabled": not args.no_affinity},
            }
            (directory / "gateway.yaml").write_text(yaml.safe_dump(config))
            processes.append(
                subprocess.Popen(
                    ["bestroute", "serve", "--config", str(directory / "gateway.yaml"), "--port", str(gateway_port)],
                    env=os.environ,
                )
            )
            for port, process in ((fast_port, processes[0]), (slow_port, processes[1]), (gateway_port, processes[2])):
                wait_for(f"http://127.0.0.1:{port}/", process)
            if not args.no_pin:
                _pin(processes)
            direct_url = f"http://127.0.0.1:{fast_port}/v1/chat/completions"
            gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            if uvloop is not None:  # a lighter event loop keeps the load generator's own delay small
                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(_load(gateway_url, "bestroute:0", args.rate, 2))  # warm-up
            # Both phases alternate in blocks, so drift in the machine's speed (a shared VM's
            # varies by a millisecond between minutes) falls on both alike.
            direct, routed, direct_errors, routed_errors = [], [], 0, 0
            block = args.seconds / args.blocks
            prompts = (
                [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()]
                if args.prompts
                else None
            )
            for b in range(args.blocks):
                offset = b * int(args.rate * block)  # both phases send the same prompts, each once
                latencies, errors = asyncio.run(_load(direct_url, "small", args.rate, block, prompts, offset))
                direct, direct_errors = direct + latencies, direct_errors + errors
                latencies, errors = asyncio.run(_load(gateway_url, "bestroute:0", args.rate, block, prompts, offset))
                routed, routed_errors = routed + latencies, routed_errors + errors
            with_feedback: list[float] = []
            feedback_errors = unexpected_feedback = 0
            if args.feedback_rate:
                with_feedback, feedback_errors, unexpected_feedback = asyncio.run(
                    _with_feedback(
                        gateway_url,
                        gateway_url.replace("chat/completions", "feedback"),
                        args.rate,
                        args.feedback_rate,
                        block * 2,
                    )
                )
            floor: dict[str, float | None] = {}
            if args.floor_seconds:
                floor = _floor_phase(
                    processes, fast_port, gateway_url, args.rate, args.floor_seconds, pin=not args.no_pin
                )
            max_rps = _max_rps(gateway_url, args.max_rps_seconds)[0] if args.max_rps_seconds else None
            single = asyncio.run(_wall(gateway_url, {**BODY, "model": "slow"}, 10))
            best_of_5 = asyncio.run(_wall(gateway_url, {**BODY, "model": "slow", "n": 5}, 10))
            heavy: dict[str, float | int] = {}
            if args.heavy_seconds:
                heavy = _heavy_phase(directory, processes, args.heavy_seconds, pin=not args.no_pin)
            scaling: dict[str, float | int | None] = {}
            if args.workers > 1:
                scaling = _workers_phase(
                    directory, config, processes, gateway_url, args.workers, args.max_rps_seconds or 5.0
                )
            time.sleep(1.0)  # the last shadow checks and rows land
            with sqlite3.connect(directory / "decisions.db") as db:
                shadow_checks = db.execute("SELECT count(*) FROM shadows").fetchone()[0]
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    d50, d99 = np.percentile(direct, [50, 99])
    g50, g99 = np.percentile(routed, [50, 99])
    print(f"direct: p50 {d50:.2f} ms, p99 {d99:.2f} ms over {len(direct)} requests", file=sys.stderr)
    print(f"gateway: p50 {g50:.2f} ms, p99 {g99:.2f} ms over {len(routed)} requests", file=sys.stderr)
    print(
        json.dumps(
            {
                "rate_per_s": args.rate,
                "prompts": str(args.prompts) if args.prompts else None,
                "guard": args.guard,
                "affinity": not args.no_affinity,
                "shadow_rate": args.shadow_rate,
                "shadow_checks": shadow_checks,
                "seconds": args.seconds,
                "requests": len(routed) + routed_errors,
                "direct_p50_ms": d50,
                "direct_p99_ms": d99,
                "gateway_p50_ms": g50,
                "gateway_p99_ms": g99,
                "p50_added_ms": g50 - d50,
                "p99_added_ms": g99 - d99,
                "errors": routed_errors + direct_errors,
                "single_wall_s": single,
                "bo5_wall_s": best_of_5,
                "bo5_wall_ratio": best_of_5 / single,
                "max_rps_p99_under_50ms": max_rps,
            }
            | (
                {
                    "feedback_rate_per_s": args.feedback_rate,
                    "with_feedback_p50_ms": float(np.percentile(with_feedback, 50)),
                    "with_feedback_p99_ms": float(np.percentile(with_feedback, 99)),
                    "with_feedback_errors": feedback_errors + unexpected_feedback,
                }
                if with_feedback
                else {}
            )
            | floor
            | heavy
            | scaling
        )
    )


def _heavy_phase(
    directory: Path, processes: list[subprocess.Popen], seconds: float, *, pin: bool
) -> dict[str, float | int]:
    """A second gateway whose every routed request draws best-of-5 50 KB answers (judged by
    consensus in its worker pool), with 1 MB prompts allowed: /healthz latency meanwhile."""
    upstream_port, gateway_port = free_port(), free_port()
    processes.append(
        subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(upstream_port), "--answer-bytes", "50000"])
    )
    config = {
        "router": str(synthetic_router(directory, samples=5)),
        "backends": [
            {"name": "small", "base_url": f"http://127.0.0.1:{upstream_port}/v1", "max_n": 5, "supports_n": True},
            {"name": "big", "base_url": f"http://127.0.0.1:{upstream_port}/v1"},
        ],
        "selector": {"kind": "consensus"},
        "limits": {"max_body_bytes": 2_000_000},
        "decision_log": {"url": f"sqlite:///{directory}/heavy.db"},
    }
    (directory / "heavy.yaml").write_text(yaml.safe_dump(config))
    processes.append(
        subprocess.Popen(["bestroute", "serve", "--config", str(directory / "heavy.yaml"), "--port", str(gateway_port)])
    )
    for port, process in ((upstream_port, processes[-2]), (gateway_port, processes[-1])):
        wait_for(f"http://127.0.0.1:{port}/", process)
    if pin:  # as in the other phases: the gateway on a core of its own, its upstream with this process
        _pin(processes[-2:])
    base = f"http://127.0.0.1:{gateway_port}"
    latencies, done, failed = asyncio.run(
        _healthz_under_load(base + "/healthz", base + "/v1/chat/completions", seconds, answers=4, prompts=4)
    )
    h50, h99 = np.percentile(latencies, [50, 99])
    print(f"healthz under heavy load: p50 {h50:.2f} ms, p99 {h99:.2f} ms; {done} heavy requests", file=sys.stderr)
    return {
        "heavy_healthz_p50_ms": float(h50),
        "heavy_healthz_p99_ms": float(h99),
        "heavy_requests": done,
        "heavy_errors": failed,
    }


if __name__ == "__main__":
    main()
