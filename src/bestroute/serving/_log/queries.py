"""What the gateway reads back from the decision log: shared budget usage and who owns a decision."""

from sqlalchemy import Engine, case, func, select

from .schema import decisions


def usage_by_client(
    engine: Engine, *, since: float, day_start: float, except_id_prefix: str
) -> tuple[dict[str | None, int], dict[str | None, float]]:
    """Per client key fingerprint: requests logged since ``since`` and cost since ``day_start``,
    leaving out the rows whose id starts with ``except_id_prefix`` (a replica's own)."""
    recent = func.sum(case((decisions.c.created_at >= since, 1), else_=0))
    spent = func.sum(case((decisions.c.created_at >= day_start, decisions.c.cost_usd), else_=0.0))
    query = (
        select(decisions.c.client_key_id, recent, spent)
        .where(
            decisions.c.created_at >= min(since, day_start),
            ~decisions.c.id.startswith(except_id_prefix, autoescape=True),
        )
        .group_by(decisions.c.client_key_id)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {r[0]: int(r[1] or 0) for r in rows}, {r[0]: float(r[2] or 0.0) for r in rows}


def decision_owner(engine: Engine, decision_id: str) -> tuple[bool, str | None]:
    """Whether the request ``decision_id`` was answered (status 200) and its client key's fingerprint."""
    with engine.connect() as connection:
        found = connection.execute(
            select(decisions.c.client_key_id).where(decisions.c.id == decision_id, decisions.c.status == 200)
        ).first()
    return (True, found[0]) if found is not None else (False, None)
