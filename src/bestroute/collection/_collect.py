"""`bestroute collect`: sample k responses per prompt and model, score them, write routing data.

Every finished sample is appended to ``responses.jsonl`` as one line the moment it is scored, so an
interrupted run (Ctrl-C, kill -9, a crashed backend) restarts where it stopped: samples already on
disk are skipped, and a line cut short by a kill is dropped and redone.
"""

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .._exceptions import ConfigError, DataError
from ..backends import CircuitBreaker, RewardClient, Upstream, UpstreamError, UpstreamSettings
from ..data import ResponseAppender, arm_name, iter_rows, read_models, read_reference, write_catalog, write_prompts
from ..strategies import Strategy
from ._scorers import (
    CHECKS,
    SCORERS,
    JudgeScorer,
    LikelihoodScorer,
    ReferenceScorer,
    RewardScorer,
    Scorer,
)


@dataclass(frozen=True, kw_only=True)
class CollectSettings:
    """What to collect and within which limits."""

    samples: int = 8
    temperature: float = 0.8
    max_tokens: int = 64
    models: list[str] | None = None  # backends to sample; None = all in the config
    concurrency: int = 2  # requests in flight per backend
    rate_per_s: float | None = None  # requests started per second per backend
    budget_usd: float | None = None
    budget_tokens: int | None = None
    scorer: str = "reference"
    check: str = "exact"  # the reference check of prompts that name none
    reward_url: str | None = None
    judge: str | None = None
    likelihood_model: str = "smollm2-135m"  # scorer likelihood: a packaged local model or a .gguf path
    stop: tuple[str, ...] = ()  # stop sequences sent with every request (a few-shot prompt's "\nQ:")
    reference: str | None = None  # the reference model, named in models.json
    # Each backend is sampled under each strategy (its responses are the arm backend@strategy);
    # none: the prompts as they are.
    strategies: tuple[Strategy, ...] = ()

    def check_against(self, config: UpstreamSettings) -> list[str]:
        """Raise ConfigError for settings that cannot work; return the backends to sample."""
        if self.samples < 1 or self.concurrency < 1 or self.max_tokens < 1:
            raise ConfigError("samples, concurrency and max_tokens must be at least 1")
        if self.check not in CHECKS:
            raise ConfigError(f"unknown check {self.check!r}; choose one of {', '.join(CHECKS)}")
        if self.scorer not in SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}; choose {', '.join(SCORERS)}")
        if self.scorer == "reward" and not self.reward_url:
            raise ConfigError("the reward scorer needs --reward-url")
        if self.scorer == "likelihood":
            from ..backends import model_path

            model_path(self.likelihood_model)  # an unknown model or missing file fails here, not mid-run
        if self.scorer == "judge" and config.backend(self.judge or "") is None:
            raise ConfigError(f"the judge scorer needs --judge naming a configured backend, got {self.judge!r}")
        names = self.models or [b.name for b in config.backends]
        unknown = [n for n in names if config.backend(n) is None]
        if unknown:
            raise ConfigError(f"models not in the configuration: {', '.join(unknown)}")
        arms = [arm_name(n, s.name) for n in names for s in self.strategies] or names
        if self.reference is not None and self.reference not in arms:
            raise ConfigError(f"the reference {self.reference!r} is not one of the arms sampled ({', '.join(arms)})")
        return names


@dataclass
class CollectReport:
    prompts: int = 0
    bad_lines: list[str] = field(default_factory=list)
    planned: int = 0  # samples this run set out to draw
    already_done: int = 0
    written: int = 0
    failed: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    stopped_by_budget: bool = False


def read_prompts(path: Path, *, needs_reference: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Valid prompts of a JSONL or CSV file, and one message per bad line (skipped, not fatal)."""
    bad: list[str] = []
    prompts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line, row in iter_rows(path, on_error=lambda error: bad.append(str(error))):
        text = row.get("prompt")
        prompt_id = str(row.get("prompt_id") or f"line-{line}")
        problem = None
        if not isinstance(text, str) or not text.strip():
            problem = "prompt: missing or empty"
        elif needs_reference and row.get("reference") in (None, ""):
            problem = "reference: required by the reference scorer"
        elif row.get("check") not in (None, "", *CHECKS):
            problem = f"check: must be one of {', '.join(CHECKS)}"
        elif prompt_id in seen:
            problem = f"duplicate prompt_id {prompt_id!r}"
        if problem:
            bad.append(str(DataError(problem, path=str(path), line=line)))
            continue
        seen.add(prompt_id)
        record = {"prompt_id": prompt_id, "prompt": text}
        for key in ("task", "reference", "check"):
            if row.get(key) not in (None, ""):
                record[key] = str(row[key])
        prompts.append(record)
    return prompts, bad


def _load_done(path: Path) -> set[tuple[str, str, int]]:
    """Keys (prompt, arm, sample) already on disk; a last line cut short by a kill is cut off so
    it is redone."""
    if not path.exists():
        return set()
    done: set[tuple[str, str, int]] = set()
    good_bytes = 0
    with path.open("rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
                key = (row["prompt_id"], arm_name(row["model"], row.get("strategy")), int(row["sample"]))
            except (ValueError, KeyError, TypeError):
                break  # only the last line can be partial: everything before it was flushed whole
            if not raw.endswith(b"\n"):
                break
            done.add(key)
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        os.truncate(path, good_bytes)
    return done


class _RateLimit:
    """Starts at most ``rate`` requests a second (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            if self.next_start > now:
                await asyncio.sleep(self.next_start - now)
            self.next_start = max(now, self.next_start) + self.interval


def _scorer(settings: CollectSettings, session: aiohttp.ClientSession, upstreams: dict[str, Upstream]) -> Scorer:
    if settings.scorer == "reward":
        return RewardScorer(RewardClient(settings.reward_url or "", session))
    if settings.scorer == "judge":
        return JudgeScorer(upstreams[settings.judge or ""])
    if settings.scorer == "likelihood":
        return LikelihoodScorer(settings.likelihood_model)
    return ReferenceScorer(settings.check)


async def collect(
    config: UpstreamSettings,
    prompts_path: Path,
    out: Path,
    settings: CollectSettings,
    *,
    progress: Callable[[CollectReport, int], None] = lambda report, total: None,
) -> CollectReport:
    """Collect into ``out`` (the exchange format); resumes whatever ``out`` already holds."""
    names = settings.check_against(config)
    report = CollectReport()
    prompts, report.bad_lines = read_prompts(prompts_path, needs_reference=settings.scorer == "reference")
    report.prompts = len(prompts)
    if not prompts:
        raise DataError("no valid prompt to collect", path=str(prompts_path))
    write_prompts(out, prompts)
    configured = {b.name: b for b in config.backends}
    # A resumed run that samples other models keeps the prices and reference already written.
    earlier = out / "models.json"
    prices = read_models(earlier) if earlier.exists() else {}
    reference = settings.reference or (read_reference(earlier) if earlier.exists() else None)
    write_catalog(out, prices | {n: configured[n].price for n in names}, reference=reference)
    responses_path = out / "responses.jsonl"
    done = _load_done(responses_path)
    ways: list[Strategy | None] = list(settings.strategies) or [None]
    todo = [
        (p, n, w, s)
        for p in prompts
        for n in names
        for w in ways
        for s in range(settings.samples)
        if (p["prompt_id"], arm_name(n, w.name if w else None), s) not in done
    ]
    report.already_done = len(prompts) * len(names) * len(ways) * settings.samples - len(todo)
    report.planned = len(todo)
    progress(report, len(todo))
    stop = asyncio.Event()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        upstreams = {
            b.name: Upstream(b, config.retries, session, CircuitBreaker(config.circuit_breaker), b.api_key())
            for b in config.backends
        }
        scorer = _scorer(settings, session, upstreams)
        gates = {n: asyncio.Semaphore(settings.concurrency) for n in names}
        limits = {n: _RateLimit(settings.rate_per_s) for n in names}
        with ResponseAppender(out) as sink:

            async def one(prompt: dict[str, Any], name: str, strategy: Strategy | None, sample: int) -> None:
                async with gates[name]:
                    if stop.is_set():
                        return
                    await limits[name].wait()
                    upstream = upstreams[name]
                    body: dict[str, Any] = {
                        "messages": [{"role": "user", "content": prompt["prompt"]}],
                        "temperature": settings.temperature,
                        "max_tokens": settings.max_tokens,
                    } | ({"stop": list(settings.stop)} if settings.stop else {})
                    try:
                        # A strategy's own sampling fields win over the run's, as in the gateway.
                        result = await upstream.complete(strategy.shape(body) if strategy else body, 1)
                        text = scored = result.texts[0]
                        if strategy is not None and strategy.program:
                            # The answer is what the program printed: scored alone, so a check
                            # such as "contains" cannot be met by the program's own text.
                            ran = await strategy.run(text)
                            text, scored = strategy.finished(text, ran), ran.output
                        quality = await scorer.score(prompt, scored)
                    except UpstreamError:
                        report.failed += 1  # not written: the next run tries it again
                        progress(report, len(todo))
                        return
                    row = {
                        "prompt_id": prompt["prompt_id"],
                        "model": name,
                        "sample": sample,
                        "quality": quality,
                        "input_tokens": result.prompt_tokens,
                        "output_tokens": result.completion_tokens,
                        "response": text,
                    } | ({"strategy": strategy.name} if strategy else {})
                    sink.write(row)
                    report.written += 1
                    report.tokens += result.prompt_tokens + result.completion_tokens
                    report.cost_usd += upstream.cost(result.prompt_tokens, result.completion_tokens)
                    progress(report, len(todo))
                    if (settings.budget_usd is not None and report.cost_usd >= settings.budget_usd) or (
                        settings.budget_tokens is not None and report.tokens >= settings.budget_tokens
                    ):
                        report.stopped_by_budget = True
                        stop.set()

            await asyncio.gather(*(one(p, n, w, s) for p, n, w, s in todo))
    return report
