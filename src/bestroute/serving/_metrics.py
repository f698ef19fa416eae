"""Prometheus metrics of one gateway (its own registry, so several apps can live in one process).

In a group of workers (``bestroute serve --workers N``) prometheus-client's multiprocess mode is
on: every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and /metrics, on
whichever worker answers, adds them up. Values a worker reads from its own state (circuits,
the decision log's writer) are so published into metrics, when scraped and every second, rather
than computed at scrape time: another worker's scrape could not compute them."""

import asyncio
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ._log import DecisionLog

PUBLISH_EVERY_S = 1.0


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.requests = Counter(
            "bestroute_requests_total",
            "Chat completion requests by answering model, n and HTTP status",
            ["model", "n", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bestroute_request_seconds",
            "Request wall time",
            ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.routing_seconds = Histogram(
            "bestroute_routing_seconds",
            "Router decision time (features + heads)",
            registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )
        self.tokens = Counter(
            "bestroute_tokens_total",
            "Tokens of every call, by the model called",
            ["model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "bestroute_cost_usd_total",
            "Cost of every call in USD, by the model called",
            ["model"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "bestroute_escalations_total",
            "Runs of judged options: the first pick accepted, a later stage's accepted ('continued'), "
            "escalated to the reference, or failed (a call failed; the request failed over)",
            ["option", "outcome"],
            registry=self.registry,
        )
        self.upstream_failures = Counter(
            "bestroute_upstream_failures_total",
            "Backend calls that failed after retries",
            ["backend"],
            registry=self.registry,
        )
        self.shadow_checks = Counter(
            "bestroute_shadow_checks_total",
            "Shadow checks of the answering option against the reference (or shadow.against): "
            "agreed, disagreed, failed (the shadow call failed) or skipped (max_in_flight were running)",
            ["option", "outcome"],
            registry=self.registry,
        )
        self.shadow_cost = Counter(
            "bestroute_shadow_cost_usd_total", "Cost of the shadow calls in USD", registry=self.registry
        )
        self.shadow_agreement = Gauge(
            "bestroute_shadow_agreement",
            "Each option's agreement with the reference on its shadow checks: the estimate and its "
            "interval's lower and upper bounds (shadow.confidence)",
            ["option", "bound"],
            registry=self.registry,
            multiprocess_mode="liveall",  # each worker's own checks (a pid label per worker)
        )
        self.shadow_below_target = Gauge(
            "bestroute_shadow_below_target",
            "1 while an option's agreement interval lies below shadow.target",
            ["option"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.affinity = Counter(
            "bestroute_affinity_total",
            "Routed turns of known conversations: kept on their model, escalated past it by the router, "
            "or moved (the model could not serve the turn)",
            ["outcome"],
            registry=self.registry,
        )
        self.out_of_domain = Counter(
            "bestroute_out_of_domain_total",
            "Routed requests the router's domain guard found far from its training prompts, by what was done "
            "(reference: sent there; flagged: only flagged)",
            ["action"],
            registry=self.registry,
        )
        self.screened = Counter(
            "bestroute_screened_total",
            "Chat and completion requests the safety screen flagged (refused or redirected), passed, or could not judge "
            "(error: refused or allowed, by screen.on_error)",
            ["verdict", "action"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, int, int], tuple[Any, ...]] = {}
        self._models: dict[str, tuple[Any, ...]] = {}
        self.circuit_open = Gauge(
            "bestroute_circuit_open",
            "1 while a backend's circuit is open (in a worker group: in any worker)",
            ["backend"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.log_backlog = Gauge(
            "bestroute_decision_log_backlog",
            "Rows waiting for the database",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.log_repaired = Counter(
            "bestroute_decision_log_repaired", "Rows sanitised before the database took them", registry=self.registry
        )
        self.log_dead_letters = Counter(
            "bestroute_decision_log_dead_letters", "Rows written to the dead-letter file", registry=self.registry
        )
        self._circuits: dict[str, Callable[[], bool]] = {}
        self._log: DecisionLog | None = None
        self._published_log_counts = (0, 0)  # repaired, dead letters

    def watch_log(self, log: DecisionLog) -> None:
        self._log = log

    def watch_circuit(self, backend: str, is_open: Callable[[], bool]) -> None:
        self._circuits[backend] = is_open

    def publish(self) -> None:
        """Copy the watched circuits' states and the writer's counts into their metrics."""
        for backend, is_open in self._circuits.items():
            self.circuit_open.labels(backend=backend).set(float(is_open()))
        if self._log is not None:
            self.log_backlog.set(self._log.backlog)
            repaired, dead = self._log.repaired, self._log.dead_letters.count
            self.log_repaired.inc(repaired - self._published_log_counts[0])
            self.log_dead_letters.inc(dead - self._published_log_counts[1])
            self._published_log_counts = (repaired, dead)

    async def publish_every(self, seconds: float = PUBLISH_EVERY_S) -> None:
        """Publish until cancelled (a worker's values reach a scrape another worker answers)."""
        while True:
            self.publish()
            await asyncio.sleep(seconds)

    def observe_request(self, *, model: str, n: int, status: int, seconds: float) -> None:
        key = (model, n, status)
        children = self._children.get(key)
        if children is None:  # labels() is the slow part of an update; its children are kept
            children = self._children[key] = (
                self.requests.labels(model=model, n=str(n), status=str(status)),
                self.latency.labels(model=model),
            )
        requests, latency = children
        requests.inc()
        latency.observe(seconds)

    def observe_call(self, *, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        prompt, completion, cost = self._per_model(model)
        prompt.inc(input_tokens)
        completion.inc(output_tokens)
        cost.inc(cost_usd)

    def _per_model(self, model: str) -> tuple[Any, ...]:
        children = self._models.get(model)
        if children is None:
            children = self._models[model] = (
                self.tokens.labels(model=model, kind="prompt"),
                self.tokens.labels(model=model, kind="completion"),
                self.cost.labels(model=model),
            )
        return children

    def exposition(self) -> bytes:
        self.publish()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
