"""The decision log's rollups: per minute and per hour, each option's traffic (requests, errors,
cost, the counterfactual cost, escalations, feedback and shadow checks), each model's calls, and a
latency histogram; per UTC day, each client key's requests and cost by replica (what shared
budgets read). Every path that inserts rows (the writer, its one-row retries, the dead-letter
replay) calls :func:`insert_rows`, which adds the rows to the rollups in the same transaction, so
the rollups always equal the rows; reading a month of traffic then sums a few thousand rollup rows
instead of scanning millions of decisions. A row that comes after its decision (a feedback, a
shadow check, a call) is counted in its decision's minute and hour, under its decision's option.
The hours are kept forever, the minutes until :func:`prune_minutes` deletes them.

Latencies are kept as counts per bin, eight bins per doubling: a percentile read from them is the
middle of its bin, within 4.4% of the exact value."""

import functools
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from .schema import REPLICA_ID_CHARS, calls, decisions, feedback, metadata, replica_of, shadows

MINUTE, HOUR, DAY = 60, 3600, 86400
WIDTHS = (MINUTE, HOUR)
BINS_PER_DOUBLING = 8
FAILED = ""  # the option of a request no option answered

option_rollup = Table(
    "option_rollup",
    metadata,
    Column("width", Integer, primary_key=True),  # seconds: MINUTE or HOUR
    Column("bucket", Integer, primary_key=True),  # its start, a multiple of width (UTC epoch seconds)
    Column("option", Text, primary_key=True),  # FAILED: the requests no option answered
    Column("requests", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("routed", Integer, nullable=False, default=0),  # answered and routed (a threshold)
    Column("routed_cost_usd", Float, nullable=False, default=0.0),
    Column("reference_cost_usd", Float, nullable=False, default=0.0),  # their counterfactual
    Column("escalated", Integer, nullable=False, default=0),
    Column("usage_estimated", Integer, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0.0),  # summed
    Column("feedback", Integer, nullable=False, default=0),
    Column("quality", Float, nullable=False, default=0.0),  # summed over the feedback
    Column("quality_squared", Float, nullable=False, default=0.0),
    Column("shadow_checks", Integer, nullable=False, default=0),  # those whose comparison came out
    Column("shadow_agreed", Integer, nullable=False, default=0),
)

model_rollup = Table(
    "model_rollup",
    metadata,
    Column("width", Integer, primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("calls", Integer, nullable=False, default=0),
    Column("samples", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0.0),
)

latency_rollup = Table(
    "latency_rollup",
    metadata,
    Column("width", Integer, primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("bin", Integer, primary_key=True),  # latency_bin() of an answered request's latency
    Column("requests", Integer, nullable=False, default=0),
)

client_rollup = Table(
    "client_rollup",
    metadata,
    Column("width", Integer, primary_key=True),  # DAY
    Column("bucket", Integer, primary_key=True),
    Column("client_key_id", String(16), primary_key=True),  # "": requests without a client key
    Column("replica", String(REPLICA_ID_CHARS), primary_key=True),  # replica_of the request ids
    Column("requests", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
)

ROLLUPS = (option_rollup, model_rollup, latency_rollup, client_rollup)
MINUTE_ROLLUPS = (option_rollup, model_rollup, latency_rollup)  # those with minute rows

# Where the minute rows start once old ones are pruned (:func:`prune_minutes`): a window that
# begins earlier is read from the hours, which are kept.
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Float, nullable=False),
)
MINUTES_FROM = "minutes_from"
_KEYS = {
    option_rollup: ("width", "bucket", "option"),
    model_rollup: ("width", "bucket", "model"),
    latency_rollup: ("width", "bucket", "bin"),
    client_rollup: ("width", "bucket", "client_key_id", "replica"),
}


def latency_bin(latency_ms: float) -> int:
    """The histogram bin of a latency: ``floor(8 log2(ms))``, at least that of 0.001 ms."""
    return math.floor(BINS_PER_DOUBLING * math.log2(max(latency_ms, 1e-3)))


def bin_middle_ms(bin_: int) -> float:
    """The geometric middle of a bin: within 2^(1/16) - 1 = 4.4% of every latency in it."""
    return float(2 ** ((bin_ + 0.5) / BINS_PER_DOUBLING))


def bucket_of(at: float, width: int) -> int:
    return math.floor(at / width) * width


def read_window(
    connection: Connection, table: Table, since: float, until: float | None
) -> tuple[int, int, ColumnElement[bool]]:
    """Where ``table``'s rows for the window from ``since`` to ``until`` (None: now) are: its
    minutes for a window of a day or less that starts where the log still has them, else its
    hours. Returns that width, the window's start (``since`` aligned down to it) and the
    condition."""
    short = (until if until is not None else time.time()) - since <= DAY
    width = MINUTE if short and since >= minutes_from(connection) else HOUR
    start = bucket_of(since, width)
    where = and_(table.c.width == width, table.c.bucket >= start)
    return width, start, where if until is None else and_(where, table.c.bucket < until)


def minutes_from(connection: Connection) -> float:
    """The start of the minute rows the log holds in full (-inf: none was ever pruned)."""
    found = connection.execute(select(rollup_state.c.value).where(rollup_state.c.name == MINUTES_FROM)).scalar()
    return -math.inf if found is None else float(found)


def prune_minutes(engine: Engine, before: float) -> int:
    """Delete the rollups' minute rows of the buckets before ``before`` (aligned down to the
    hour) and return how many. Where the minutes now start is recorded first, in a transaction
    of its own, so no reader sums a window from minutes half deleted; then a day of buckets is
    deleted a transaction, so the writers of other replicas wait for one day's rows at most.
    Several replicas may prune at once: the latest start recorded wins. A row that arrives
    later for a pruned minute (a feedback on an old decision) is added to its hour as ever, and
    its minute row, below the recorded start, is never read and goes at the next pruning."""
    cut = bucket_of(before, HOUR)
    statement = _insert_of(rollup_state, engine.dialect.name)
    statement = statement.values(name=MINUTES_FROM, value=float(cut)).on_conflict_do_update(
        index_elements=["name"],
        set_={"value": statement.excluded.value},
        where=rollup_state.c.value < statement.excluded.value,
    )
    with engine.begin() as connection:
        connection.execute(statement)
    deleted = 0
    for table in MINUTE_ROLLUPS:
        while True:  # from the oldest minute row left, a day at a time (days without rows skipped)
            with engine.begin() as connection:
                oldest = connection.execute(
                    select(func.min(table.c.bucket)).where(table.c.width == MINUTE, table.c.bucket < cut)
                ).scalar()
                if oldest is None:
                    break
                until = min(bucket_of(oldest, DAY) + DAY, cut)
                minutes = and_(table.c.width == MINUTE, table.c.bucket < until)
                deleted += connection.execute(delete(table).where(minutes)).rowcount
    return deleted


Increments = dict[tuple[Any, ...], dict[str, float]]


def insert_rows(connection: Connection, batch: Sequence[tuple[Table, dict[str, Any]]]) -> None:
    """Insert sanitised rows (decisions before what refers to them) and add them to the
    rollups, in the caller's transaction."""
    for table in (decisions, calls, feedback, shadows):
        rows = [row for t, row in batch if t is table]
        if rows:
            connection.execute(insert(table), rows)
    roll_up(connection, batch)


def roll_up(
    connection: Connection, batch: Sequence[tuple[Table, dict[str, Any]]], rollups: Sequence[Table] = ROLLUPS
) -> None:
    """Add rows already inserted to the ``rollups`` (what :func:`insert_rows` and the backfill of
    an older log call)."""
    own = {row["id"]: (row["created_at"], row.get("option")) for t, row in batch if t is decisions}
    referred = {row["decision_id"] for t, row in batch if t is not decisions} - own.keys()
    known = own | _decisions_of(connection, referred)
    for table, increments in _increments(batch, known).items():
        if table in rollups:
            _upsert(connection, table, increments)


def backfill(engine: Engine, rollups: Sequence[Table] = ROLLUPS, *, batch: int = 5000) -> None:
    """Add every row of a log to the ``rollups`` it did not have, ``batch`` decisions at a time
    (with their calls, feedback and shadow checks), each batch in a transaction of its own."""
    after = ""
    while True:
        with engine.begin() as connection:
            found = connection.execute(
                select(decisions).where(decisions.c.id > after).order_by(decisions.c.id).limit(batch)
            ).mappings()
            rows: list[tuple[Table, dict[str, Any]]] = [(decisions, dict(row)) for row in found]
            if not rows:
                return
            ids = [row["id"] for _, row in rows]
            for table in (calls, feedback, shadows):
                for start in range(0, len(ids), 500):
                    referring = connection.execute(
                        select(table).where(table.c.decision_id.in_(ids[start : start + 500]))
                    )
                    rows += [(table, dict(row)) for row in referring.mappings()]
            roll_up(connection, rows, rollups)
            after = ids[-1]


def _decisions_of(connection: Connection, ids: set[str]) -> dict[str, tuple[float, str | None]]:
    found: dict[str, tuple[float, str | None]] = {}
    listed = sorted(ids)
    for start in range(0, len(listed), 500):
        query = select(decisions.c.id, decisions.c.created_at, decisions.c.option).where(
            decisions.c.id.in_(listed[start : start + 500])
        )
        found |= {row[0]: (row[1], row[2]) for row in connection.execute(query)}
    return found


def _increments(
    batch: Iterable[tuple[Table, dict[str, Any]]], known: dict[str, tuple[float, str | None]]
) -> dict[Table, Increments]:
    sums: dict[Table, Increments] = {table: defaultdict(lambda: defaultdict(float)) for table in ROLLUPS}

    def add(table: Table, key: tuple[Any, ...], at: float, widths: Sequence[int] = WIDTHS, **values: float) -> None:
        for width in widths:
            entry = sums[table][(width, bucket_of(at, width), *key)]
            for name, value in values.items():
                entry[name] += value

    for table, row in batch:
        if table is decisions:
            answered = row["status"] == 200
            # routed: with the counterfactual its row estimated (older rows have none)
            routed = answered and row.get("threshold") is not None and row.get("reference_cost_usd") is not None
            cost = row.get("cost_usd") or 0.0
            add(
                option_rollup,
                (row.get("option") or FAILED,),
                row["created_at"],
                requests=1,
                errors=0 if answered else 1,
                cost_usd=cost,
                routed=int(routed),
                routed_cost_usd=cost if routed else 0.0,
                reference_cost_usd=row["reference_cost_usd"] if routed else 0.0,
                escalated=int(bool(row.get("escalated"))),
                usage_estimated=int(bool(row.get("usage_estimated"))),
                latency_ms=row["latency_ms"] or 0.0,
            )
            if answered:
                add(latency_rollup, (latency_bin(row["latency_ms"] or 0.0),), row["created_at"], requests=1)
            client = (row.get("client_key_id") or "", replica_of(row["id"]))
            add(client_rollup, client, row["created_at"], (DAY,), requests=1, cost_usd=cost)
            continue
        decision = known.get(row["decision_id"])
        if decision is None:  # its decision is not in the log (refused, or never written)
            continue
        at, option = decision
        if table is calls:
            add(
                model_rollup,
                (row["model"],),
                at,
                calls=1,
                samples=row["samples"],
                failed=int(row.get("error") is not None),
                cost_usd=row["cost_usd"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                latency_ms=row["latency_ms"],
            )
        elif table is feedback:
            quality = row["quality"]
            add(option_rollup, (option or FAILED,), at, feedback=1, quality=quality, quality_squared=quality * quality)
        elif table is shadows and row.get("agreed") is not None:
            add(option_rollup, (option or FAILED,), at, shadow_checks=1, shadow_agreed=int(bool(row["agreed"])))
    return sums


def _upsert(connection: Connection, table: Table, increments: Increments) -> None:
    """Add ``increments`` to ``table``'s rows, creating those that are not there. Keys in sorted
    order, so that two replicas adding to the same rows never wait on each other in a cycle."""
    if not increments:
        return
    keys = _KEYS[table]
    statement, values, whole = _upsert_statement(table, connection.dialect.name)
    rows = [
        dict(zip(keys, key, strict=True))
        | {name: int(entry.get(name, 0)) if name in whole else float(entry.get(name, 0.0)) for name in values}
        for key, entry in sorted(increments.items())
    ]
    connection.execute(statement, rows)


@functools.cache
def _upsert_statement(table: Table, dialect: str) -> tuple[Any, tuple[str, ...], frozenset[str]]:
    """The upsert of ``table`` on ``dialect``, its value columns and those of them that are
    integers: built once (the writer runs it on every batch)."""
    keys = _KEYS[table]
    values = tuple(c.name for c in table.columns if c.name not in keys)
    statement = _insert_of(table, dialect)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys), set_={name: table.c[name] + statement.excluded[name] for name in values}
    )
    whole = frozenset(c.name for c in table.columns if isinstance(c.type, Integer))
    return statement, values, whole


def _insert_of(table: Table, dialect: str) -> Any:
    """``table``'s INSERT in ``dialect``'s own form, which has ``ON CONFLICT`` (the rollups' upserts)."""
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the decision log's rollups need SQLite or PostgreSQL, not {dialect}")
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
