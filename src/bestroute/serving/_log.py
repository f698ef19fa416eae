"""The decision log: one row per request, written by a background thread so the response never
waits for the database, and drained completely on a clean shutdown."""

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .._exceptions import BestRouteError, ConfigError
from .._text import without_lone_surrogates
from ..data import write_routing_data
from ._config import GatewayConfig

_logger = logging.getLogger(__name__)

metadata = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("prompt_hash", String(64), nullable=False, index=True),
    Column("prompt", Text),  # only when decision_log.store_prompts is on
    Column("requested_model", String(200), nullable=False),
    Column("model", String(200)),  # the backend that answered
    Column("n", Integer),
    Column("threshold", Float),
    Column("scores", JSON),
    Column("fallbacks", JSON),  # options tried before the one that answered
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("call_input_tokens", Integer),  # one call's input, for export
    Column("response_tokens", Integer),  # the returned response's output, for export
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("status", Integer, nullable=False),  # HTTP status returned to the client
    Column("error", Text),
    Column("response", Text),  # only when store_prompts is on
    Column("client_key_id", String(16)),  # a fingerprint of the client's key: feedback must come with it
    Column("escalation", JSON),  # a mixture or escalating option: confidence, escalated, cost per stage
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


def _sqlite_wal(connection: Any, _: Any) -> None:
    # WAL with synchronous=NORMAL: a commit does not fsync, readers never block the writer,
    # and a crash loses at most the last transactions, never the file.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


# Errors that say the database is away, not that it refused a row: rows wait for it.
_OUTAGE = (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)
_INT4 = (-(2**31), 2**31 - 1)  # PostgreSQL's INTEGER
TRUNCATED = "…[truncated]"


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


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


def _open(url: str) -> Engine:
    """The log's database, its tables created and columns added since older versions added."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_wal)
    metadata.create_all(engine)
    present = {c["name"] for c in inspect(engine).get_columns(decisions.name)}
    with engine.begin() as connection:
        for column in decisions.columns:
            if column.name not in present:  # nullable columns only, so adding them is safe
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(text(f"ALTER TABLE {decisions.name} ADD COLUMN {column.name} {kind}"))
    return engine


def sanitize_row(row: dict[str, Any], table: Table = decisions) -> tuple[dict[str, Any], bool]:
    """The row as ``table`` takes it, and whether anything had to change."""
    clean: dict[str, Any] = {}
    for column in table.columns:
        if column.name not in row:
            continue
        value = row[column.name]
        if isinstance(value, str):
            value = _clean_text(value, getattr(column.type, "length", None))
        elif isinstance(column.type, JSON):
            value = _clean_json(value)
        elif isinstance(column.type, Integer) and isinstance(value, int):
            value = min(max(value, _INT4[0]), _INT4[1])
        clean[column.name] = value
    return clean, clean != {k: row[k] for k in clean} or len(clean) != len(row)


Entry = tuple[Table, dict[str, Any]]  # a row and the table it goes to


class DeadLetters:
    """Rows that could not be written, one JSON document a line: ``{"reason", "at", "table", "row"}``.
    JSON's escapes keep every row byte-true (lone surrogates included), so a replay loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    def add(self, rows: list[Entry], reason: str) -> None:
        lines = "".join(
            json.dumps({"reason": reason, "at": time.time(), "table": table.name, "row": r}, default=str) + "\n"
            for table, r in rows
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="ascii") as handle:
                handle.write(lines)
            self.count += len(rows)
        _logger.warning("decision log: %d row(s) written to %s (%s)", len(rows), self.path, reason)


class DecisionLog:
    """Rows are appended in the event loop; a thread inserts what has accumulated every
    ``batch_window_s``. It wakes on a timer, not per row, so under load it takes the GIL
    a few times a second rather than once per request.

    Every row is sanitised before it is written (and counted as ``repaired`` when that changed
    it). A batch the database refuses for its content is written row by row; a row still
    refused goes to the dead-letter file. Only an outage keeps rows waiting, at most
    ``max_backlog`` of them; the oldest beyond that, and any still waiting at shutdown, go to
    the dead-letter file too. Nothing is dropped, and the writer thread survives any error."""

    def __init__(
        self, url: str, *, dead_letter_path: Path, max_backlog: int = 100_000, batch_window_s: float = 0.05
    ) -> None:
        self.batch_window_s = batch_window_s
        self.max_backlog = max_backlog
        self.engine = _open(url)
        self.dead_letters = DeadLetters(dead_letter_path)
        self.repaired = 0
        self._pending: deque[Entry] = deque()
        self._writing = threading.Lock()  # one batch at a time, from the thread or from flush()
        self._queue = threading.Lock()  # taking a batch out or putting it back, as ``backlog`` sees it
        self._in_flight = 0
        self._closing = threading.Event()
        self._errors_seen: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Rows not written yet: queued, or in the batch being written."""
        with self._queue:
            return len(self._pending) + self._in_flight

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append((decisions, row))  # atomic; never blocks the event loop

    def write_feedback(self, decision_id: str, quality: float, comment: str | None) -> None:
        """Queued like a decision, and written after it: feedback waits out an outage too."""
        self._pending.append(
            (feedback, {"decision_id": decision_id, "quality": quality, "comment": comment, "created_at": time.time()})
        )

    def flush(self) -> bool:
        """Write every row queued so far; False if the database is away (the rows keep waiting)."""
        self._guarded(self._drain)
        return not self._pending

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        while not self._closing.wait(self.batch_window_s):
            self._guarded(self._drain)
        self._guarded(self._drain)
        with self._writing:  # the database is still away at shutdown: keep the rows on disk
            if self._pending:
                self._spill(len(self._pending), "database unavailable at shutdown")

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # a bug here must not stop logging for every later request
            kind = type(exc).__name__
            if kind not in self._errors_seen:
                self._errors_seen.add(kind)
                _logger.exception("decision log: unexpected error; the writer goes on")

    def _spill(self, count: int, reason: str) -> None:
        with self._queue:
            rows = [self._pending.popleft() for _ in range(count)]
        self.dead_letters.add(rows, reason)

    def _drain(self) -> None:
        with self._writing:
            if len(self._pending) > self.max_backlog:
                self._spill(len(self._pending) - self.max_backlog, "backlog full while the database was away")
            with self._queue:
                rows = [self._pending.popleft() for _ in range(len(self._pending))]
                self._in_flight = len(rows)
            if not rows:
                return
            waiting: list[Entry] = []
            try:
                waiting = self._write(rows)
            except Exception as exc:  # never lose popped rows, whatever went wrong
                self.dead_letters.add(rows, f"writer error ({type(exc).__name__}: {exc})")
                raise
            finally:
                with self._queue:  # the database is away: keep the rows, in order, for the next window
                    self._pending.extendleft(reversed(waiting))
                    self._in_flight = 0
            if waiting:
                _logger.warning("decision log: %d rows wait for the database", len(waiting))

    def _write(self, entries: list[Entry]) -> list[Entry]:
        """Insert ``entries``; returns those that must wait for the database."""
        kept: list[Entry] = []
        cleaned: list[Entry] = []
        for table, row in entries:
            try:
                clean, changed = sanitize_row(row, table)
            except Exception as exc:  # noqa: BLE001 -- not a row at all: set it aside, write the others
                self.dead_letters.add(
                    [(table, row)], f"not a {table.name.removesuffix('s')} row ({type(exc).__name__}: {exc})"
                )
                continue
            self.repaired += changed
            kept.append((table, row))
            cleaned.append((table, clean))
        if not cleaned:
            return []
        try:
            with self.engine.begin() as connection:
                for table in (decisions, feedback):  # decisions first: feedback follows its decision
                    rows = [clean for t, clean in cleaned if t is table]
                    if rows:
                        connection.execute(insert(table), rows)
            return []
        except Exception as exc:  # noqa: BLE001 -- drivers raise their own types for refused content
            if _is_outage(exc):
                return kept
        # The database refused the batch for its content: find the rows it refuses.
        for i, (entry, (table, clean)) in enumerate(zip(kept, cleaned)):
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(table), [clean])
            except Exception as exc:  # noqa: BLE001 -- as above: a refused row is dead-lettered
                if _is_outage(exc):
                    return kept[i:]
                self.dead_letters.add([entry], f"refused by the database ({type(exc).__name__}: {_first_line(exc)})")
        return []

    def usage_by_client(
        self, *, since: float, day_start: float, except_id_prefix: str
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
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return {r[0]: int(r[1] or 0) for r in rows}, {r[0]: float(r[2] or 0.0) for r in rows}

    def owner(self, decision_id: str) -> tuple[bool, str | None]:
        """Whether the request ``decision_id`` was answered (status 200) and its client key's fingerprint."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(decisions.c.client_key_id).where(decisions.c.id == decision_id, decisions.c.status == 200)
            ).first()
        return (True, found[0]) if found is not None else (False, None)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""


def replay_dead_letters(url: str, path: Path) -> tuple[int, int]:
    """Insert the rows of a dead-letter file, sanitised; a row whose id is logged already counts
    as replayed. A line still refused stays in the file as it was. Returns (replayed, left).

    The file is first moved aside, so dead letters a running gateway adds meanwhile start a new
    file: nothing is read twice or lost."""
    if not path.is_file():
        raise BestRouteError(f"no dead-letter file at {path}")
    try:
        engine = _open(url)  # an unreachable database fails here, before the file is touched
    except SQLAlchemyError as exc:
        raise BestRouteError(f"cannot open the decision log {url!r}: {_first_line(exc)}") from None
    taken = path.with_name(path.name + ".replaying")
    os.replace(path, taken)
    lines = [line for line in taken.read_text(encoding="ascii").splitlines() if line.strip()]
    kept: list[str] = []
    replayed = 0
    try:
        for number, line in enumerate(lines):
            try:
                letter = json.loads(line)
                table = feedback if letter.get("table") == feedback.name else decisions
                clean, _ = sanitize_row(letter["row"], table)
                with engine.begin() as connection:
                    logged = select(decisions.c.id).where(decisions.c.id == clean.get("id"))
                    if table is feedback or connection.execute(logged).first() is None:
                        connection.execute(insert(table), [clean])
                replayed += 1
            except Exception as exc:  # noqa: BLE001 -- a line that cannot be replayed stays in the file
                if _is_outage(exc):
                    kept += lines[number:]
                    raise BestRouteError(
                        f"the decision-log database is unavailable ({_first_line(exc)}); "
                        f"{len(lines) - number} rows stay in {path}"
                    ) from None
                _logger.warning("dead letter %d refused again (%s)", number + 1, _first_line(exc))
                kept.append(line)
    finally:
        engine.dispose()
        if kept:
            with path.open("a", encoding="ascii") as handle:
                handle.write("".join(line + "\n" for line in kept))
        taken.unlink()
    return replayed, len(kept)


def export_log(config: GatewayConfig, out: Path) -> int:
    """Write answered requests that have a stored prompt and user feedback as routing data in
    the exchange format (quality = mean feedback); returns the number of prompts written."""
    engine = _open(config.decision_log.url)
    with engine.connect() as connection:
        rows = connection.execute(select(decisions).where(decisions.c.status == 200)).mappings().all()
        scores: dict[str, list[float]] = {}
        for decision_id, quality in connection.execute(select(feedback.c.decision_id, feedback.c.quality)):
            scores.setdefault(decision_id, []).append(quality)
    engine.dispose()
    usable = [r for r in rows if r["prompt"] is not None and r["id"] in scores]
    if not usable:
        raise BestRouteError(
            "no logged request has both a stored prompt and feedback; turn on "
            "decision_log.store_prompts and post feedback to /v1/feedback"
        )
    write_routing_data(
        out,
        ({"prompt_id": r["id"], "prompt": r["prompt"]} for r in usable),
        (
            {
                "prompt_id": r["id"],
                "model": r["model"],
                "sample": 0,
                "quality": sum(scores[r["id"]]) / len(scores[r["id"]]),
                "input_tokens": r["call_input_tokens"] or 0,
                "output_tokens": r["response_tokens"] or 0,
                "response": r["response"],
            }
            for r in usable
        ),
        {b.name: b.price for b in config.backends},
    )
    return len(usable)


def check_database(url: str) -> None:
    """Open the decision log's database once, so a wrong URL or an unreachable server is a
    one-line error at start-up (ConfigError), not a traceback from the server's start-up hook."""
    try:
        _open(url).dispose()
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise ConfigError(f"decision_log.url: cannot open {shown} ({_first_line(exc)})") from None
