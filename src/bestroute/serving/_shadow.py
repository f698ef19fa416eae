"""Shadow checks, a live quality guarantee: for a sampled share of the requests a cheaper option
answered, the gateway also asks the reference (or ``shadow.against``) after the client has its
answer, compares the two answers by the selection layer's answer equivalence, and logs the result
and its cost. Per option, the share of checks that agreed, with a Wilson interval, is exposed in
/metrics and /healthz; an option whose interval's lower bound is below ``shadow.target`` is
flagged (a metric and a log line), and with ``on_breach: avoid`` one whose upper bound is below
it is no longer routed to.

Agreement with the reference is what a shadow check can see without a label: where both are
right they agree; where they disagree one of them is wrong. It is a lower bound on the quality
relative to the reference wherever the reference is right."""

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

from ..backends import Deadline, UpstreamError
from ..selection import AnswerSpec, equivalent, read_answer
from ._arms import Arms, finished, shaped
from ._config import ShadowConfig
from ._log import DecisionLog, ShadowRow, first_line, shadow_tallies
from ._metrics import GatewayMetrics
from ._recording import RequestRecord
from .protocol import ChatCompletionRequest

_logger = logging.getLogger("bestroute.shadow")


def wilson_interval(agreed: int, checks: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``agreed`` of ``checks``) at ``confidence``;
    (0, 1) with no checks. It keeps its coverage near the nominal level for proportions near 1,
    where the normal approximation's interval does not."""
    if checks == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = agreed / checks
    centre = (p + z * z / (2 * checks)) / (1 + z * z / checks)
    half = z * math.sqrt(p * (1 - p) / checks + z * z / (4 * checks * checks)) / (1 + z * z / checks)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Tally:
    checks: int = 0
    agreed: int = 0


@dataclass
class ShadowTallies:
    """Each option's shadow checks: this process's since it started (kept across reloads), or,
    where checks are shared, every replica's of the last ``shadow.window_s`` as last read from
    the decision log (:func:`share_checks`)."""

    by_option: dict[str, Tally] = field(default_factory=dict)
    flagged: set[str] = field(default_factory=set)  # below target: warned about once per breach
    in_group: bool = False  # a worker of `serve --workers N`: the workers' checks are always shared

    def shared(self, config: ShadowConfig) -> bool:
        return config.shared or self.in_group

    def add(self, option: str, agreed: bool) -> Tally:
        tally = self.by_option.setdefault(option, Tally())
        tally.checks += 1
        tally.agreed += agreed
        return tally

    def report(self, config: ShadowConfig) -> dict[str, dict[str, float | int | bool]]:
        found: dict[str, dict[str, float | int | bool]] = {}
        for option, tally in sorted(self.by_option.items()):
            lower, upper = wilson_interval(tally.agreed, tally.checks, config.confidence)
            found[option] = {
                "checks": tally.checks,
                "agreed": tally.agreed,
                "agreement": tally.agreed / tally.checks,
                "lower": lower,
                "upper": upper,
                "below_target": _below(tally, lower, config),
            }
        return found

    def avoided(self, config: ShadowConfig) -> frozenset[str]:
        """The options ``on_breach: avoid`` keeps traffic from: their whole interval is below the target."""
        if config.on_breach != "avoid":
            return frozenset()
        return frozenset(
            option
            for option, tally in self.by_option.items()
            if tally.checks >= config.min_checks
            and wilson_interval(tally.agreed, tally.checks, config.confidence)[1] < config.target
        )


def _below(tally: Tally, lower: float, config: ShadowConfig) -> bool:
    return tally.checks >= config.min_checks and lower < config.target


class ShadowChecks:
    """Decides which answered requests get a shadow check and runs it.

    Parameters
    ----------
    config : ShadowConfig
        The rate, the backend compared with, the target and what a breach does.
    arms : Arms
        The backends (and strategies) ``against`` names.
    against : str
        The backend (or arm) asked: ``config.against`` or the router's reference.
    tallies : ShadowTallies
        The process's per-option tallies.
    answer : AnswerSpec
        How answers are read (the selector's).
    store_prompts : bool
        Whether the shadow's answer is logged.
    """

    def __init__(
        self,
        config: ShadowConfig,
        *,
        arms: Arms,
        against: str,
        tallies: ShadowTallies,
        log: DecisionLog,
        metrics: GatewayMetrics,
        answer: AnswerSpec,
        store_prompts: bool,
        rng: random.Random | None = None,
    ) -> None:
        self.config, self.arms, self.against, self.tallies = config, arms, against, tallies
        self.log, self.metrics, self.answer, self.store_prompts = log, metrics, answer, store_prompts
        self.rng = rng or random.Random()
        self.running: set[asyncio.Task[None]] = set()

    def start(self, request: ChatCompletionRequest, record: RequestRecord) -> None:
        """Start the check of an answered request, as a task of its own (the response and its
        connection never wait for it): only routed requests whose answer did not come from
        ``against`` itself, at the configured rate, while fewer than ``max_in_flight`` run."""
        answered = record.answered
        if not self.config.rate or answered is None or not record.plan.routed or record.response is None:
            return
        if record.model == self.against or self.rng.random() >= self.config.rate:
            return
        if self.arms.get(self.against)[0].config.refusal(request.needs) is not None:
            return  # the reference cannot take this request (tools, images, its size): nothing to compare
        option = answered.attempt.label
        if len(self.running) >= self.config.max_in_flight:
            self.metrics.shadow_checks.labels(option=option, outcome="skipped").inc()
            return
        task = asyncio.create_task(self._check(request, record.ticket.request_id, option, record.response))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _check(self, request: ChatCompletionRequest, decision_id: str, option: str, response: str) -> None:
        upstream, strategy = self.arms.get(self.against)
        started = time.monotonic()
        body = shaped(request.upstream_body(upstream.config.upstream_model, n=1, stream=False), strategy)
        agreed: bool | None = None
        cost, error, text = 0.0, None, None
        tokens: tuple[int | None, int | None] = (None, None)
        try:
            completion = await finished(
                await upstream.complete(body, 1, Deadline.after(self.config.timeout_s)), strategy
            )
            cost = upstream.cost(completion.prompt_tokens, completion.completion_tokens)
            text, tokens = completion.texts[0], (completion.prompt_tokens, completion.completion_tokens)
            agreed = equivalent(read_answer(response, self.answer), read_answer(text, self.answer))
        except UpstreamError as exc:
            error = str(exc)
        self.metrics.shadow_cost.inc(cost)
        self.metrics.shadow_checks.labels(
            option=option, outcome="failed" if agreed is None else "agreed" if agreed else "disagreed"
        ).inc()
        self.log.write(
            ShadowRow(
                decision_id=decision_id,
                created_at=time.time(),
                option=option,
                against=self.against,
                agreed=agreed,
                cost_usd=cost,
                latency_ms=(time.monotonic() - started) * 1000,
                error=error,
                response=text if self.store_prompts else None,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
            )
        )
        if agreed is not None and not self.tallies.shared(self.config):  # shared: counted once read from the log
            self._judge(option, self.tallies.add(option, agreed))

    async def read_shared(self) -> None:
        """Take every replica's checks of the last ``window_s`` from the decision log as the
        tallies, and judge each option by them; the last reading stays while the log is away."""
        try:
            read = await asyncio.to_thread(shadow_tallies, self.log.engine, since=time.time() - self.config.window_s)
        except Exception as exc:  # noqa: BLE001 -- the database away or busy: judge by the last reading
            _logger.warning(
                "shadow checks: cannot read the shared tallies (%s: %s)", type(exc).__name__, first_line(exc)
            )
            return
        gone = self.tallies.by_option.keys() - read.keys()
        self.tallies.by_option = {option: Tally(checks, agreed) for option, (checks, agreed) in read.items()}
        for option, tally in self.tallies.by_option.items():
            self._judge(option, tally)
        for option in gone:  # no checks in the window any more: nothing to judge it by
            self.tallies.flagged.discard(option)
            self.metrics.shadow_below_target.labels(option=option).set(0.0)

    def _judge(self, option: str, tally: Tally) -> None:
        lower, upper = wilson_interval(tally.agreed, tally.checks, self.config.confidence)
        gauge = self.metrics.shadow_agreement
        gauge.labels(option=option, bound="estimate").set(tally.agreed / tally.checks)
        gauge.labels(option=option, bound="lower").set(lower)
        gauge.labels(option=option, bound="upper").set(upper)
        below = _below(tally, lower, self.config)
        self.metrics.shadow_below_target.labels(option=option).set(float(below))
        if below and option not in self.tallies.flagged:
            self.tallies.flagged.add(option)
            _logger.warning(
                "option %r agrees with %s on %d of %d shadow checks (%.0f%% interval %.3f-%.3f): below the "
                "target %.3f%s",
                option,
                self.against,
                tally.agreed,
                tally.checks,
                100 * self.config.confidence,
                lower,
                upper,
                self.config.target,
                "; it is avoided once its whole interval is below" if self.config.on_breach == "avoid" else "",
            )
        elif not below:
            self.tallies.flagged.discard(option)


async def share_checks(current: Callable[[], ShadowChecks]) -> None:
    """While the settings in force share checks (``shadow.shared``, or the workers of a group),
    read every replica's from the decision log every ``shadow.refresh_s``, the first at once;
    until cancelled. ``current`` gives the service's checks (a reload replaces them)."""
    while True:
        checks = current()
        if checks.config.rate and checks.tallies.shared(checks.config):
            await checks.read_shared()
        await asyncio.sleep(checks.config.refresh_s)
