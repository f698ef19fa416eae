"""The decision log's schema: its tables, the typed rows the gateway writes to them, and the one
sanitiser every row passes before a database sees it."""

import functools
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from ..._text import without_lone_surrogates

metadata = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False, index=True),
    # Not indexed: no query looks a prompt up, and an index of random hashes dirtied a random page
    # of it per row (12 of the 32 microseconds a row took with 100,000 rows in the log).
    Column("prompt_hash", String(64), nullable=False),
    Column("prompt", Text),  # only when decision_log.store_prompts is on
    Column("requested_model", String(200), nullable=False),
    Column("option", Text),  # the label of the option that answered
    Column("model", String(200)),  # the backend whose answer the client got
    Column("n", Integer),  # samples the answering option drew, the reference's included
    Column("threshold", Float),
    Column("scores", JSON),
    Column("fallbacks", JSON),  # options tried before the one that answered, and other notes
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),  # over every call (see calls)
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("status", Integer, nullable=False),  # HTTP status returned to the client
    Column("error", Text),
    Column("response", Text),  # only when store_prompts is on
    Column("client_key_id", String(16)),  # a fingerprint of the client's key: feedback must come with it
    Column("escalated", Integer),  # 1: the answering option asked the reference
    Column("confidence", Float),  # the answering option's last judged confidence
    Column("escalation", JSON),  # a mixture or escalating option: its stages
    Column("usage_estimated", Integer),  # 1: some upstream reported no usage; tokens and cost are estimates
    Column("router_choice", Text),  # a routed request: the option the router chose
    Column("planned_option", Text),  # the option tried first (another than the choice when exploring)
    Column("propensity", Float),  # the probability planned_option was planned with (explore)
    Column("reference_cost_usd", Float),  # a routed answer: what the reference alone would have cost (estimated)
    # conversation affinity: the conversation a turn belongs to (NULL: a first turn named by no
    # header; later turns name it by its id), and the key the next turn's earlier messages hash to
    Column("conversation_id", String(64)),
    Column("turn_key", String(64), index=True),
    Column("domain_distance", Float),  # a routed prompt's distance from the router's training prompts
    Column("screen", Text),  # the safety screen's verdict on a flagged (or unjudged) request
    # the dashboard's decisions list: newest first within one value of a filter
    Index("ix_decisions_status_created_at", "status", "created_at"),
    Index("ix_decisions_model_created_at", "model", "created_at"),
    Index("ix_decisions_option_created_at", "option", "created_at"),
    Index("ix_decisions_client_key_id_created_at", "client_key_id", "created_at"),
    Index("ix_decisions_conversation_id_created_at", "conversation_id", "created_at"),
)

calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),  # 0 for the first option tried
    Column("stage", Integer, nullable=False),
    Column("stage_label", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("first_sample", Integer, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("requests", Integer, nullable=False),  # HTTP requests (one per sample where n is not supported)
    Column("input_tokens", Integer, nullable=False),  # over all its requests
    Column("output_tokens", Integer, nullable=False),
    Column("sample_tokens", JSON),  # each response's output tokens
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text),
    Column("kept", Integer),  # the index (in this call) of the response the client got
    Column("responses", JSON),  # only when store_prompts is on
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False, index=True),
    Column("quality", Float, nullable=False),
    Column("comment", Text),
    Column("created_at", Float, nullable=False),
)


shadows = Table(
    "shadows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("option", Text, nullable=False),  # the option that answered the client
    Column("against", String(200), nullable=False),  # the backend it was compared with
    Column("agreed", Integer),  # 1: the same answer; 0: another; NULL: the shadow call failed
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text),
    Column("response", Text),  # the shadow's answer, only when store_prompts is on
    Column("input_tokens", Integer),  # the shadow call's usage (NULL: it failed)
    Column("output_tokens", Integer),
)


@dataclass(frozen=True, kw_only=True)
class DecisionRow:
    """One request's row of ``decisions``."""

    id: str
    created_at: float
    prompt_hash: str
    prompt: str | None
    requested_model: str
    option: str | None
    model: str | None
    n: int | None
    threshold: float | None
    scores: dict[str, float]
    fallbacks: list[str]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: int
    error: str | None
    response: str | None
    client_key_id: str | None
    escalated: bool | None
    confidence: float | None
    escalation: dict[str, Any] | None
    usage_estimated: bool = False
    router_choice: str | None = None
    planned_option: str | None = None
    propensity: float | None = None
    reference_cost_usd: float | None = None
    conversation_id: str | None = None
    turn_key: str | None = None
    domain_distance: float | None = None
    screen: str | None = None


@dataclass(frozen=True, kw_only=True)
class CallRow:
    """One call's row of ``calls``."""

    decision_id: str
    attempt: int
    stage: int
    stage_label: str
    model: str
    first_sample: int
    samples: int
    requests: int
    input_tokens: int
    output_tokens: int
    sample_tokens: list[int]
    cost_usd: float
    latency_ms: float
    error: str | None
    kept: int | None
    responses: list[str | None] | None


@dataclass(frozen=True, kw_only=True)
class FeedbackRow:
    decision_id: str
    quality: float
    comment: str | None
    created_at: float


@dataclass(frozen=True, kw_only=True)
class ShadowRow:
    """One shadow check's row of ``shadows``."""

    decision_id: str
    created_at: float
    option: str
    against: str
    agreed: bool | None
    cost_usd: float
    latency_ms: float
    error: str | None
    response: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None


Row = DecisionRow | CallRow | FeedbackRow | ShadowRow
TABLE_OF: dict[type, Table] = {DecisionRow: decisions, CallRow: calls, FeedbackRow: feedback, ShadowRow: shadows}
TABLES = {table.name: table for table in (decisions, calls, feedback, shadows)}

# A gateway's request ids: the prefix, the replica's id (shared budgets tell a replica's rows
# by it), then the time and randomness.
REQUEST_ID_PREFIX = "chatcmpl-"
REPLICA_ID_CHARS = 8


def replica_of(decision_id: str) -> str:
    """The replica id a gateway's request id carries ("" for an id of another form)."""
    if not decision_id.startswith(REQUEST_ID_PREFIX):
        return ""
    return decision_id[len(REQUEST_ID_PREFIX) : len(REQUEST_ID_PREFIX) + REPLICA_ID_CHARS]


_INT4 = (-(2**31), 2**31 - 1)  # PostgreSQL's INTEGER
TRUNCATED = "…[truncated]"


def _clean_text(value: str, limit: int | None = None) -> str:
    """Text every database takes: lone surrogates replaced, NUL removed, cut to ``limit``."""
    value = without_lone_surrogates(value).replace("\x00", "")
    if limit is not None and len(value) > limit:
        value = value[: limit - len(TRUNCATED)] + TRUNCATED
    return value


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # PostgreSQL's JSON has no NaN or Infinity
    if isinstance(value, dict):
        return {_clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


def as_mapping(row: Row) -> dict[str, Any]:
    # Every field of a row type is an init field, so its __dict__ is the mapping
    # (dataclasses.fields() per row took a tenth of the writer's time).
    return dict(vars(row))


def sanitize(row: dict[str, Any], table: Table) -> tuple[dict[str, Any], bool]:
    """The row as ``table`` takes it, and whether anything had to change. A key that is not a
    column of the table is an error (ValueError), never dropped in silence."""
    rules = _column_rules(table)
    unknown = row.keys() - rules.keys()
    if unknown:
        raise ValueError(f"not a column of {table.name}: {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    for name, value in row.items():
        if value is None:  # most optional columns of most rows
            clean[name] = None
            continue
        kind, length, nullable = rules[name]
        if isinstance(value, str):
            value = _clean_text(value, length)
        elif kind == "json":
            value = _clean_json(value)
        elif kind == "int" and isinstance(value, int):
            value = min(max(int(value), _INT4[0]), _INT4[1])
        elif kind == "float" and isinstance(value, float) and not math.isfinite(value):
            value = None if nullable else 0.0
        clean[name] = value
    return clean, clean != row


@functools.cache
def _column_rules(table: Table) -> dict[str, tuple[str, int | None, bool]]:
    """Per column: its kind (json, int, float or other), its length and whether it is nullable,
    read from the table once (the writer sanitises every row; SQLAlchemy's lookups were most of it)."""
    rules = {}
    for column in table.columns:
        kind = next(
            (k for k, t in (("json", JSON), ("int", Integer), ("float", Float)) if isinstance(column.type, t)), ""
        )
        rules[column.name] = (kind or "other", getattr(column.type, "length", None), bool(column.nullable))
    return rules


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
