"""What one request decided and paid for (its RequestRecord, made once when the request ends)
and its accounting: the decision-log rows, the metrics, the client's budget and the set of
requests feedback may name. Headers, the response's ``bestroute`` field, the log and the metrics
all read the record, so they cannot disagree."""

import dataclasses
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..data import ModelPrice
from ..selection import Drawn, StageRecord
from ._budgets import Budgets
from ._feedback import AnsweredRequests
from ._log import REQUEST_ID_PREFIX, CallRow, DecisionLog, DecisionRow
from ._metrics import GatewayMetrics
from ._planning import Plan
from ._sampling import Run
from .protocol import ChatCompletionRequest


@dataclass(frozen=True)
class Reference:
    """The router's reference and its backend's prices: what a routed request's cost is set against."""

    model: str
    price: ModelPrice


@dataclass(frozen=True)
class Ticket:
    """A request's identity from the moment it is planned: its id, its client and its start."""

    request_id: str
    client: str | None  # fingerprint of the client's API key
    started: float  # time.perf_counter()


@dataclass(frozen=True)
class RequestRecord:
    """Everything one request did: the plan, each attempt's run (failed ones too: what they drew
    is paid for), the notes on the way (fallbacks, a selector that failed), and how it ended.
    ``answered`` is the run whose answer the client got."""

    ticket: Ticket
    plan: Plan
    selector: str
    runs: tuple[Run, ...]
    notes: tuple[str, ...]
    status: int
    latency_s: float
    error: str | None = None
    response: str | None = None  # the answer's text, as the log stores it

    @property
    def answered(self) -> Run | None:
        last = self.runs[-1] if self.runs else None
        return last if last is not None and last.execution.answer is not None else None

    @property
    def calls(self) -> tuple[Drawn, ...]:
        return tuple(call for run in self.runs for call in run.execution.calls)

    @property
    def cost_usd(self) -> float:
        return sum(run.execution.cost_usd for run in self.runs)

    @property
    def usage_estimated(self) -> bool:
        """Whether some call's tokens (and so the cost) are estimates: its upstream reported none."""
        return any(call.tokens_estimated for call in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(run.execution.input_tokens for run in self.runs)

    @property
    def completion_tokens(self) -> int:
        return sum(run.execution.output_tokens for run in self.runs)

    @property
    def model(self) -> str | None:
        """The backend whose answer the client got."""
        answered = self.answered
        return answered.execution.answer.model if answered and answered.execution.answer else None

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def headers(self) -> dict[str, str]:
        answered = self.answered
        assert answered is not None
        headers = answer_headers(self.ticket, self.plan, self.model or "", answered.execution.samples)
        headers["x-bestroute-cost-usd"] = f"{self.cost_usd:.8f}"
        if self.usage_estimated:
            headers["x-bestroute-usage-estimated"] = "true"
        if answered.attempt.option.composite:
            headers["x-bestroute-escalated"] = "true" if answered.execution.escalated else "false"
            confidence = answered.execution.confidence
            if confidence is not None:
                headers["x-bestroute-confidence"] = f"{confidence:.4f}"
        return headers

    def details(self) -> dict[str, Any]:
        """The response's ``bestroute`` field: which option answered, why, and every call paid for."""
        answered = self.answered
        assert answered is not None
        execution, answer = answered.execution, answered.execution.answer
        assert answer is not None
        return {
            "option": answered.attempt.label,
            "model": self.model,
            "n": execution.samples,
            "threshold": self.plan.threshold,
            "routed": self.plan.routed,
            "scores": dict(self.plan.scores),
            "fallbacks": list(self.notes),
            "excluded": dict(self.plan.excluded),
            "constraint": self.plan.constraint,
            "guard": {"out_of_domain": self.plan.out_of_domain, "distance": self.plan.domain_distance}
            if self.plan.domain_distance is not None
            else None,
            "conversation": self.plan.turn.conversation or self.ticket.request_id if self.plan.turn else None,
            "affinity": dataclasses.asdict(self.plan.affinity) if self.plan.affinity is not None else None,
            "screen": {"action": self.plan.screen.action, "verdict": self.plan.screen.verdict.describe()}
            if self.plan.screen is not None
            else None,
            "selector": self.selector if self.plan.routed and execution.samples > 1 else None,
            "selected_sample": answer.number,
            "cost_usd": self.cost_usd,
            "usage_estimated": self.usage_estimated,
            "router_choice": self.plan.choice,
            "propensity": self.plan.propensity,
            "escalation": escalation(answered) if answered.attempt.option.composite else None,
            "calls": [call_details(call) for call in self.calls],
        }


def _ending(run: Run) -> str:
    execution = run.execution
    if execution.answer is None:
        return "failed"
    if execution.escalated:
        return "escalated"
    return "accepted" if len(execution.stages) == 1 else "continued"


def answer_headers(ticket: Ticket, plan: Plan, model: str, samples: int) -> dict[str, str]:
    """The headers every answer has (a relayed stream has only these: its cost is not known yet)."""
    headers = {"x-bestroute-model": model, "x-bestroute-n": str(samples), "x-request-id": ticket.request_id}
    if plan.threshold is not None:
        headers["x-bestroute-threshold"] = f"{plan.threshold:g}"
    if plan.constraint is not None:
        headers["x-bestroute-constraint"] = plan.constraint
    if plan.out_of_domain:
        headers["x-bestroute-guard"] = "out_of_domain"
    if plan.affinity is not None:
        headers["x-bestroute-affinity"] = plan.affinity.outcome
    if plan.screen is not None:
        headers["x-bestroute-screen"] = plan.screen.action
    return headers


def escalation(run: Run) -> dict[str, Any]:
    """A mixture or escalating option's stages, as the response and the decision log list them."""
    execution = run.execution
    return {
        "accept": run.attempt.option.accept,
        "confidence": execution.confidence,
        "escalated": execution.escalated,
        "stages": [_stage(stage) for stage in execution.stages],
    }


def _stage(stage: StageRecord) -> dict[str, Any]:
    return {
        "option": stage.label,
        "models": list(stage.models),
        "n": stage.n,
        "confidence": stage.confidence,
        "verdict": stage.verdict,
        "cost_usd": stage.cost_usd,
    }


def call_details(call: Drawn) -> dict[str, Any]:
    return {
        "model": call.call.model,
        "first_sample": call.call.first,
        "samples": call.call.samples,
        "requests": call.requests,
        "input_tokens": call.input_tokens,
        "output_tokens": sum(call.output_tokens),
        "cost_usd": call.cost_usd,
        "tokens_estimated": call.tokens_estimated,
        "latency_ms": round(call.latency_s * 1000, 3),
        "error": call.error,
    }


class Recorder:
    """Opens a Ticket per request and accounts its record once it ends: the decision-log rows,
    the request metrics, the client's budget, and (answered) the requests feedback may name.

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
        self._reference_output = [0, 0]  # the reference's output tokens and samples over its calls so far

    def open(self, client: str | None) -> Ticket:
        # The id starts with this replica's id, so shared budgets can tell its rows; then the time
        # in microseconds, so the log's primary key and the calls' index grow at their end (random
        # ids dirtied a page of each per row: a third of the SQLite writer's time at 200k rows);
        # then 11 random hex digits.
        request_id = (
            f"{REQUEST_ID_PREFIX}{self.budgets.replica}{time.time_ns() // 1000:013x}{secrets.token_hex(6)[:11]}"
        )
        return Ticket(request_id=request_id, client=client, started=time.perf_counter())

    def close(
        self,
        request: ChatCompletionRequest,
        ticket: Ticket,
        plan: Plan,
        runs: list[Run],
        notes: list[str],
        status: int,
        *,
        selector: str,
        reference: Reference,
        error: str | None = None,
        response: str | None = None,
        turn_key: str | None = None,
    ) -> RequestRecord:
        """The request's record, accounted once: a row, its calls, the metrics and the budget.
        ``turn_key``: an answered turn's key for its conversation's next turn."""
        record = RequestRecord(
            ticket=ticket,
            plan=plan,
            selector=selector,
            runs=tuple(runs),
            notes=tuple(notes),
            status=status,
            latency_s=time.perf_counter() - ticket.started,
            error=error,
            response=response,
        )
        prompt, requested, store, created_at = request.prompt_text, request.model, self.store_prompts, time.time()
        counterfactual = self._reference_cost(record, reference)
        self.log.write_later(
            lambda: [
                decision_row(
                    record,
                    prompt,
                    requested,
                    created_at,
                    store=store,
                    reference_cost=counterfactual,
                    turn_key=turn_key,
                ),
                *call_rows(record, store=store),
            ]
        )
        if status == 200:
            self.answered.add(ticket.request_id, ticket.client)
        if record.cost_usd:
            self.budgets.charge(ticket.client, record.cost_usd)
        self._observe(record)
        return record

    def _reference_cost(self, record: RequestRecord, reference: Reference) -> float | None:
        """What a routed answered request would have cost sent to the reference alone: one HTTP
        request's input tokens (every call sends the same prompt) at the reference's input price,
        and at its output price the reference's own output tokens per sample where it was called,
        else their mean per sample over its calls so far, else the request's output per sample."""
        called = [d for d in record.calls if d.ok and d.requests > 0 and d.output_tokens]
        mine = [d for d in called if d.call.model == reference.model]
        tokens, samples = sum(sum(d.output_tokens) for d in mine), sum(len(d.output_tokens) for d in mine)
        self._reference_output[0] += tokens
        self._reference_output[1] += samples
        if record.plan.threshold is None or record.status != 200 or not called:
            return None
        if samples:
            output = tokens / samples
        elif self._reference_output[1]:
            output = self._reference_output[0] / self._reference_output[1]
        else:
            output = sum(sum(d.output_tokens) for d in called) / sum(len(d.output_tokens) for d in called)
        return reference.price.cost(min(d.input_tokens / d.requests for d in called), output)

    def _observe(self, record: RequestRecord) -> None:
        """The request by the model that answered, its samples and status; tokens and cost by
        each model called; each judged option's run by how it ended."""
        answered = record.answered
        self.metrics.observe_request(
            model=record.model or "none",
            n=answered.execution.samples if answered is not None else 0,
            status=record.status,
            seconds=record.latency_s,
        )
        for drawn in record.calls:
            self.metrics.observe_call(
                model=drawn.call.model,
                input_tokens=drawn.input_tokens,
                output_tokens=sum(drawn.output_tokens),
                cost_usd=drawn.cost_usd,
            )
        for run in record.runs:
            if run.attempt.option.judged:
                self.metrics.escalations.labels(option=run.attempt.label, outcome=_ending(run)).inc()


def decision_row(
    record: RequestRecord,
    prompt: str,
    requested_model: str,
    created_at: float,
    *,
    store: bool,
    reference_cost: float | None,
    turn_key: str | None = None,
) -> DecisionRow:
    answered = record.answered
    execution = answered.execution if answered is not None else None
    return DecisionRow(
        id=record.ticket.request_id,
        created_at=created_at,
        # surrogatepass: a prompt with a lone surrogate is still hashed (the row is sanitised later)
        prompt_hash=hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
        prompt=prompt if store else None,
        requested_model=requested_model,
        option=answered.attempt.label if answered is not None else None,
        model=record.model,
        n=execution.samples if execution is not None else None,
        threshold=record.plan.threshold,
        scores=dict(record.plan.scores),
        fallbacks=list(record.notes),
        latency_ms=record.latency_s * 1000,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cost_usd=record.cost_usd,
        usage_estimated=record.usage_estimated,
        router_choice=record.plan.choice,
        planned_option=record.plan.attempts[0].label if record.plan.routed and record.plan.attempts else None,
        propensity=record.plan.propensity,
        reference_cost_usd=reference_cost,
        status=record.status,
        error=record.error,
        response=record.response if store else None,
        client_key_id=record.ticket.client,
        escalated=execution.escalated if execution is not None else None,
        confidence=execution.confidence if execution is not None else None,
        escalation=escalation(answered) if answered is not None and answered.attempt.option.composite else None,
        conversation_id=record.plan.turn.conversation if record.plan.turn is not None else None,
        turn_key=turn_key,
        domain_distance=record.plan.domain_distance,
        screen=record.plan.screen.note() if record.plan.screen is not None else None,
    )


def call_rows(record: RequestRecord, *, store: bool) -> list[CallRow]:
    """One row per call of every run; the call holding the sample the client got says which it is
    (``kept``, its index in the call)."""
    answered = record.answered
    kept = _kept(answered) if answered is not None else None
    rows = []
    for attempt, run in enumerate(record.runs):
        for stage_number, stage in enumerate(run.execution.stages):
            for drawn in stage.calls:
                call = drawn.call
                rows.append(
                    CallRow(
                        decision_id=record.ticket.request_id,
                        attempt=attempt,
                        stage=stage_number,
                        stage_label=stage.label,
                        model=call.model,
                        first_sample=call.first,
                        samples=call.samples,
                        requests=drawn.requests,
                        input_tokens=drawn.input_tokens,
                        output_tokens=sum(drawn.output_tokens),
                        sample_tokens=list(drawn.output_tokens),
                        cost_usd=drawn.cost_usd,
                        latency_ms=drawn.latency_s * 1000,
                        error=drawn.error,
                        kept=kept[1] if kept is not None and kept[0] is drawn else None,
                        responses=list(drawn.texts) if store else None,
                    )
                )
    return rows


def _kept(run: Run) -> tuple[Drawn, int] | None:
    """The call the run's answer came from, and the answer's index in it: the reference's call
    if the run escalated, else the call of its stages that drew that sample."""
    answer, execution = run.execution.answer, run.execution
    if answer is None:
        return None
    stages = execution.stages[-1:] if execution.escalated else execution.stages
    for stage in stages:
        for drawn in stage.calls:
            if drawn.call.model == answer.model and drawn.call.first <= answer.number < drawn.call.first + len(
                drawn.texts
            ):
                return drawn, answer.number - drawn.call.first
    return None
