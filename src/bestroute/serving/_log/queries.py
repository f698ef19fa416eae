"""What the gateway reads back from the decision log: shared budget usage, every replica's shadow
checks, who owns a decision, a conversation's latest turn (affinity across replicas), and where the
newest share of the routed traffic starts (retraining's held-out part)."""

import math

from sqlalchemy import Engine, func, select

from ..._exceptions import BestRouteError
from .rollup import DAY, bucket_of, client_rollup, option_rollup, read_window
from .schema import REQUEST_ID_PREFIX, decisions


def usage_by_client(
    engine: Engine, *, since: float, day_start: float, except_replica: str
) -> tuple[dict[str | None, int], dict[str | None, float]]:
    """Per client key fingerprint: requests logged since ``since`` (the rows of that minute) and
    cost on the UTC day from ``day_start`` (its rollup rows: a replica's read does not grow with
    the day's traffic), leaving out the replica ``except_replica``'s own."""
    recent = (
        select(decisions.c.client_key_id, func.count())
        .where(
            decisions.c.created_at >= since,
            ~decisions.c.id.startswith(REQUEST_ID_PREFIX + except_replica, autoescape=True),
        )
        .group_by(decisions.c.client_key_id)
    )
    spent = (
        select(client_rollup.c.client_key_id, func.sum(client_rollup.c.cost_usd))
        .where(
            client_rollup.c.width == DAY,
            client_rollup.c.bucket == bucket_of(day_start, DAY),
            client_rollup.c.replica != except_replica,
        )
        .group_by(client_rollup.c.client_key_id)
    )
    with engine.connect() as connection:
        requests = {r[0]: int(r[1]) for r in connection.execute(recent)}
        costs = {r[0] or None: float(r[1] or 0.0) for r in connection.execute(spent)}
    return requests, costs


def shadow_tallies(engine: Engine, *, since: float) -> dict[str, tuple[int, int]]:
    """Per option, the shadow checks whose comparison came out and how many of them agreed, of
    every replica's requests since ``since`` (read from the rollups, aligned down to their minute
    or hour: a replica's read does not grow with the traffic)."""
    r = option_rollup
    with engine.connect() as connection:
        _, _, where = read_window(connection, r, since, None)
        rows = connection.execute(
            select(r.c.option, func.sum(r.c.shadow_checks), func.sum(r.c.shadow_agreed))
            .where(where, r.c.shadow_checks > 0)
            .group_by(r.c.option)
        ).all()
    return {str(option): (int(checks), int(agreed)) for option, checks, agreed in rows}


def decision_owner(engine: Engine, decision_id: str) -> tuple[bool, str | None]:
    """Whether the request ``decision_id`` was answered (status 200) and its client key's fingerprint."""
    with engine.connect() as connection:
        found = connection.execute(
            select(decisions.c.client_key_id).where(decisions.c.id == decision_id, decisions.c.status == 200)
        ).first()
    return (True, found[0]) if found is not None else (False, None)


def latest_turn(
    engine: Engine, *, since: float, conversation: str | None = None, turn_key: str | None = None
) -> tuple[str, str, float] | None:
    """The latest answered routed turn since ``since`` of the ``conversation`` (by its id), or the
    turn whose next-turn key is ``turn_key``: its conversation's id (a first turn's own id), the
    model that answered it and when."""
    d = decisions
    if (conversation is None) == (turn_key is None):
        raise ValueError("name a conversation or a turn key")
    match = d.c.conversation_id == conversation if conversation is not None else d.c.turn_key == turn_key
    query = (
        select(func.coalesce(d.c.conversation_id, d.c.id), d.c.model, d.c.created_at)
        .where(match, d.c.created_at >= since, d.c.status == 200, d.c.threshold.is_not(None), d.c.model.is_not(None))
        .order_by(d.c.created_at.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        found = connection.execute(query).first()
    return None if found is None else (str(found[0]), str(found[1]), float(found[2]))


def newest_share_start(engine: Engine, share: float) -> float:
    """The time from which the newest ``share`` of the answered routed requests were logged."""
    d = decisions
    routed = (d.c.threshold.is_not(None), d.c.status == 200)
    with engine.connect() as connection:
        count = int(connection.execute(select(func.count()).where(*routed)).scalar_one())
        if count < 2:
            raise BestRouteError(f"the decision log has {count} answered routed request(s): too few to split in time")
        older = min(count - 1, max(1, math.floor(count * (1 - share))))
        at = connection.execute(
            select(d.c.created_at).where(*routed).order_by(d.c.created_at).limit(1).offset(older)
        ).scalar_one()
    return float(at)
