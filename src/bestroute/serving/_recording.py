"""What one request decided and paid for (its Outcome) and its accounting: the decision-log row,
the metrics, the client's budget and the set of requests feedback may name."""

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..backends import Upstream, UpstreamRejected
from ._budgets import Budgets
from ._feedback import AnsweredRequests
from ._log import DecisionLog
from ._metrics import GatewayMetrics
from ._planning import Attempt, Plan
from .protocol import ChatCompletionRequest


@dataclass
class Outcome:
    """What was decided and paid for one request."""

    request_id: str
    plan: Plan
    started: float
    client: str | None  # fingerprint of the client's API key
    selector: str  # the selector's name, reported when it picked among samples
    attempt: Attempt | None = None
    fallbacks: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    selected: int = 0
    call_input_tokens: int | None = None
    response_tokens: int | None = None
    rejection: UpstreamRejected | None = None  # a backend's context window was too small
    escalation: dict[str, Any] | None = None  # a mixture or escalating option's stages

    def charge(self, upstream: Upstream, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += upstream.cost(prompt_tokens, completion_tokens)

    def headers(self) -> dict[str, str]:
        assert self.attempt is not None
        headers = {
            "x-bestroute-model": self.attempt.upstream.name,
            "x-bestroute-n": str(self.attempt.n),
            "x-bestroute-cost-usd": f"{self.cost_usd:.8f}",
            "x-request-id": self.request_id,
        }
        if self.plan.threshold is not None:
            headers["x-bestroute-threshold"] = f"{self.plan.threshold:g}"
        if self.escalation is not None:
            headers["x-bestroute-escalated"] = "true" if self.escalation["escalated"] else "false"
            if self.escalation["confidence"] is not None:
                headers["x-bestroute-confidence"] = f"{self.escalation['confidence']:.4f}"
        return headers

    def details(self) -> dict[str, Any]:
        """The response's ``bestroute`` field: which option answered and why."""
        assert self.attempt is not None
        return {
            "option": self.attempt.label,
            "model": self.attempt.upstream.name,
            "n": self.attempt.n,
            "threshold": self.plan.threshold,
            "routed": self.plan.routed,
            "scores": self.plan.scores,
            "fallbacks": self.fallbacks,
            "selector": self.selector if self.attempt.n > 1 else None,
            "selected_sample": self.selected,
            "cost_usd": self.cost_usd,
            "escalation": self.escalation,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Recorder:
    """Opens an Outcome per request and accounts it once it ends: one decision-log row, the
    request metrics, the client's budget, and (answered) the requests feedback may name.

    Parameters
    ----------
    log, metrics, answered, budgets
        The process's own: a reload keeps them, and so this recorder.
    store_prompts : bool
        Whether rows keep the prompt and response texts (``decision_log.store_prompts``, which
        takes effect at a restart).
    """

    def __init__(
        self,
        *,
        log: DecisionLog,
        metrics: GatewayMetrics,
        answered: AnsweredRequests,
        budgets: Budgets,
        store_prompts: bool,
    ) -> None:
        self.log, self.metrics, self.answered, self.budgets = log, metrics, answered, budgets
        self.store_prompts = store_prompts

    def open(self, plan: Plan, client: str | None, selector: str) -> Outcome:
        # The id starts with this replica's id, so shared budgets can tell its rows.
        request_id = f"chatcmpl-{self.budgets.replica}{uuid.uuid4().hex[:24]}"
        return Outcome(request_id=request_id, plan=plan, started=time.perf_counter(), client=client, selector=selector)

    def record(
        self,
        request: ChatCompletionRequest,
        outcome: Outcome,
        status: int,
        *,
        error: str | None = None,
        response: str | None = None,
    ) -> None:
        latency = time.perf_counter() - outcome.started
        prompt = request.prompt_text()
        model = outcome.attempt.upstream.name if outcome.attempt else None
        store = self.store_prompts
        self.log.write(
            {
                "id": outcome.request_id,
                "created_at": time.time(),
                # surrogatepass: a prompt with a lone surrogate is still hashed (the row is sanitised later)
                "prompt_hash": hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
                "prompt": prompt if store else None,
                "requested_model": request.model,
                "model": model,
                "n": outcome.attempt.n if outcome.attempt else None,
                "threshold": outcome.plan.threshold,
                "scores": outcome.plan.scores,
                "fallbacks": outcome.fallbacks,
                "latency_ms": latency * 1000,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "call_input_tokens": outcome.call_input_tokens,
                "response_tokens": outcome.response_tokens,
                "cost_usd": outcome.cost_usd,
                "status": status,
                "error": error,
                "response": response if store else None,
                "client_key_id": outcome.client,
                "escalation": outcome.escalation,
            }
        )
        if status == 200:
            self.answered.add(outcome.request_id, outcome.client)
        if outcome.cost_usd:
            self.budgets.charge(outcome.client, outcome.cost_usd)
        self.metrics.observe(
            model=model or "none",
            n=outcome.attempt.n if outcome.attempt else 0,
            status=status,
            seconds=latency,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_usd=outcome.cost_usd,
        )
