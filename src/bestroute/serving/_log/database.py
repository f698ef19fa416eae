"""Opening the decision log's database: creating its tables, migrating an older log (columns
added since, rollups filled from its rows), and checking a URL at start-up."""

from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..._exceptions import ConfigError
from ..._json import json_bytes
from .rollup import ROLLUPS, backfill
from .schema import TABLES, decisions, first_line, metadata

RETIRED_INDEX = "ix_decisions_prompt_hash"


def _sqlite_wal(connection: Any, _: Any) -> None:
    # WAL with synchronous=NORMAL: a commit does not fsync, readers never block the writer,
    # and a crash loses at most the last transactions, never the file.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def _json_text(value: Any) -> str:
    return json_bytes(value).decode("utf-8")


def open_database(url: str) -> Engine:
    """The log's database, its tables created, columns added since older versions added, and
    the rollups a log did not have filled from its rows. JSON columns are written by orjson
    (``bestroute._json``), several times faster than the standard library's encoder."""
    engine = create_engine(url, json_serializer=_json_text)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_wal)
    missing = [table for table in ROLLUPS if not inspect(engine).has_table(table.name)]
    metadata.create_all(engine)
    with engine.begin() as connection:
        for table in TABLES.values():
            present = {c["name"] for c in inspect(connection).get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:  # nullable columns only, so adding them is safe
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        # dropped since: the prompt hashes' index, which no query used (schema.py says why)
        connection.execute(text(f"DROP INDEX IF EXISTS {RETIRED_INDEX}"))
    for index in decisions.indexes:  # those added since the table was made
        index.create(engine, checkfirst=True)
    if missing:  # a log from before these rollups: add what it holds to them, once
        backfill(engine, missing)
    return engine


def check_database(url: str) -> None:
    """Open the decision log's database once, so a wrong URL, a missing driver or an unreachable
    server is a one-line error at start-up (ConfigError), not a traceback from the server's
    start-up hook."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        open_database(url).dispose()
    except SQLAlchemyError as exc:
        raise ConfigError(f"decision_log.url: cannot open {shown} ({first_line(exc)})") from None
    except ModuleNotFoundError as exc:  # the dialect's driver is not installed
        raise ConfigError(
            f"decision_log.url: {shown} needs the {exc.name!r} package (for PostgreSQL: pip install 'bestroute[postgres]')"
        ) from None
