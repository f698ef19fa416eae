"""Writing the decision log: rows are queued in the event loop and inserted by a background
thread, so a response never waits for the database; rows it refuses go to a dead-letter file,
which ``replay_dead_letters`` inserts later."""

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..._exceptions import BestRouteError
from .._config import LOG_BATCH_WINDOW_S
from .database import open_database
from .rollup import DAY, insert_rows, prune_minutes
from .schema import TABLE_OF, TABLES, Row, as_mapping, decisions, first_line, sanitize

_logger = logging.getLogger(__name__)

# Errors that say the database is away, not that it refused a row: rows wait for it.
_OUTAGE = (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


Deferred = Callable[[], Sequence[Row]]  # makes a request's rows, in the writer thread


def _entry(row: Row) -> tuple[Table, dict[str, Any]]:
    """The table a row goes to, and its columns; ValueError for anything that is not a row."""
    table = TABLE_OF.get(type(row))
    if table is None:
        raise ValueError(f"not a row: {type(row).__name__}")
    return table, as_mapping(row)


def _letter(row: Row, reason: str) -> str:
    """A dead-letter line; JSON's escapes keep a row byte-true (lone surrogates included)."""
    table, mapping = (TABLE_OF[type(row)].name, as_mapping(row)) if type(row) in TABLE_OF else (None, row)
    return json.dumps({"reason": reason, "at": time.time(), "table": table, "row": mapping}, default=str) + "\n"


class DeadLetters:
    """Rows that could not be written, one JSON document a line: ``{"reason", "at", "table", "row"}``.
    JSON's escapes keep every row byte-true (lone surrogates included), so a replay loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    def add(self, rows: Sequence[Row], reason: str) -> None:
        lines = "".join(_letter(row, reason) for row in rows)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="ascii") as handle:
                handle.write(lines)
            self.count += len(rows)
        _logger.warning("decision log: %d row(s) written to %s (%s)", len(rows), self.path, reason)


PRUNE_EVERY_S = 3600.0


class DecisionLog:
    """Rows are appended in the event loop; a thread inserts what has accumulated every
    ``batch_window_s``. It wakes on a timer, not per row, so under load it takes the GIL
    a few times a second rather than once per request.

    Every row is sanitised before it is written (and counted as ``repaired`` when that changed
    it). A batch the database refuses for its content is written row by row; a row still
    refused goes to the dead-letter file. Only an outage keeps rows waiting, at most
    ``max_backlog`` of them; the oldest beyond that, and any still waiting at shutdown, go to
    the dead-letter file too. Nothing is dropped, and the writer thread survives any error.

    With ``minute_rollup_days``, the thread also deletes the rollups' minute rows older than
    that, at start-up and every hour after (:func:`~.rollup.prune_minutes`); the hours stay."""

    def __init__(
        self,
        url: str,
        *,
        dead_letter_path: Path,
        max_backlog: int = 100_000,
        batch_window_s: float = LOG_BATCH_WINDOW_S,
        minute_rollup_days: float | None = None,
    ) -> None:
        self.batch_window_s = batch_window_s
        self.max_backlog = max_backlog
        self.minute_rollup_days = minute_rollup_days
        self._next_prune = 0.0  # time.monotonic() of the next pruning: the first at start-up
        self.engine = open_database(url)
        self.dead_letters = DeadLetters(dead_letter_path)
        self.repaired = 0
        self._pending: deque[Row | Deferred] = deque()
        self._writing = threading.Lock()  # one batch at a time, from the thread or from flush()
        self._queue = threading.Lock()  # taking a batch out or putting it back, as ``backlog`` sees it
        self._in_flight = 0
        self._closing = threading.Event()
        self._errors_seen: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Entries not written yet (a row, or a request's rows still to be made): queued, or in
        the batch being written."""
        with self._queue:
            return len(self._pending) + self._in_flight

    def write(self, row: Row) -> None:
        """Queue a row (a decision, its calls, feedback); rows are written in the order queued,
        so a decision's calls and feedback follow it, and wait out an outage with it."""
        self._pending.append(row)  # atomic; never blocks the event loop

    def write_later(self, rows: "Deferred") -> None:
        """Queue a request's rows as a function that makes them: it is called by the writer
        thread, so building the rows costs the event loop nothing."""
        self._pending.append(rows)

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
            self._prune_when_due()  # catches its own failures
        self._guarded(self._drain)
        with self._writing:  # the database is still away at shutdown: keep the rows on disk
            if self._pending:
                self._spill(len(self._pending), "database unavailable at shutdown")

    def _prune_when_due(self) -> None:
        if self.minute_rollup_days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        try:
            deleted = prune_minutes(self.engine, time.time() - self.minute_rollup_days * DAY)
        except Exception as exc:  # noqa: BLE001 -- the database away or busy: the next hour tries again
            _logger.warning(
                "decision log: old minute rollups not pruned (%s: %s); tried again in an hour",
                type(exc).__name__,
                first_line(exc),
            )
            return
        if deleted:
            _logger.info(
                "decision log: %d minute rollup rows older than %g days deleted", deleted, self.minute_rollup_days
            )

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
            entries = [self._pending.popleft() for _ in range(count)]
        self.dead_letters.add(self._made(entries), reason)

    def _made(self, entries: list[Row | Deferred]) -> list[Row]:
        """The rows of queued entries, deferred ones made now; one whose making fails (a bug)
        is logged and counted as a dead letter it could not become."""
        rows: list[Row] = []
        for entry in entries:
            if not callable(entry):
                rows.append(entry)
                continue
            try:
                rows.extend(entry())
            except Exception as exc:  # noqa: BLE001 -- one request's bad record must not stop the others
                self.dead_letters.count += 1
                _logger.warning("decision log: a request's rows could not be made (%s: %s)", type(exc).__name__, exc)
        return rows

    def _drain(self) -> None:
        with self._writing:
            if len(self._pending) > self.max_backlog:
                self._spill(len(self._pending) - self.max_backlog, "backlog full while the database was away")
            with self._queue:
                entries = [self._pending.popleft() for _ in range(len(self._pending))]
                self._in_flight = len(entries)
            if not entries:
                return
            rows = self._made(entries)
            waiting: list[Row] = []
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

    def _write(self, rows: list[Row]) -> list[Row]:
        """Insert ``rows``; returns those that must wait for the database."""
        kept: list[Row] = []
        cleaned: list[tuple[Table, dict[str, Any]]] = []
        for row in rows:
            try:
                table, mapping = _entry(row)
                clean, changed = sanitize(mapping, table)
            except Exception as exc:  # noqa: BLE001 -- not a row at all: set it aside, write the others
                self.dead_letters.add([row], f"not a row ({type(exc).__name__}: {exc})")
                continue
            self.repaired += changed
            kept.append(row)
            cleaned.append((table, clean))
        if not cleaned:
            return []
        try:
            with self.engine.begin() as connection:
                insert_rows(connection, cleaned)
            return []
        except Exception as exc:  # noqa: BLE001 -- drivers raise their own types for refused content
            if _is_outage(exc):
                return kept
        # The database refused the batch for its content: find the rows it refuses.
        for i, (row, (table, clean)) in enumerate(zip(kept, cleaned, strict=True)):
            try:
                with self.engine.begin() as connection:
                    insert_rows(connection, [(table, clean)])
            except Exception as exc:  # noqa: BLE001 -- as above: a refused row is dead-lettered
                if _is_outage(exc):
                    return kept[i:]
                self.dead_letters.add([row], f"refused by the database ({type(exc).__name__}: {first_line(exc)})")
        return []


def replay_dead_letters(url: str, path: Path) -> tuple[int, int]:
    """Insert the rows of a dead-letter file, sanitised; a row whose id is logged already counts
    as replayed. A line still refused stays in the file as it was. Returns (replayed, left).

    The file is first moved aside, so dead letters a running gateway adds meanwhile start a new
    file: nothing is read twice or lost."""
    if not path.is_file():
        raise BestRouteError(f"no dead-letter file at {path}")
    try:
        engine = open_database(url)  # an unreachable database fails here, before the file is touched
    except SQLAlchemyError as exc:
        raise BestRouteError(f"cannot open the decision log {url!r}: {first_line(exc)}") from None
    taken = path.with_name(path.name + ".replaying")
    os.replace(path, taken)
    lines = [line for line in taken.read_text(encoding="ascii").splitlines() if line.strip()]
    kept: list[str] = []
    replayed = 0
    try:
        for number, line in enumerate(lines):
            try:
                letter = json.loads(line)
                table = TABLES[letter.get("table", decisions.name)]
                clean, _ = sanitize(letter["row"], table)
                with engine.begin() as connection:
                    logged = select(decisions.c.id).where(decisions.c.id == clean.get("id"))
                    if table is not decisions or connection.execute(logged).first() is None:
                        insert_rows(connection, [(table, clean)])
                replayed += 1
            except Exception as exc:  # noqa: BLE001 -- a line that cannot be replayed stays in the file
                if _is_outage(exc):
                    kept += lines[number:]
                    raise BestRouteError(
                        f"the decision-log database is unavailable ({first_line(exc)}); "
                        f"{len(lines) - number} rows stay in {path}"
                    ) from None
                _logger.warning("dead letter %d refused again (%s)", number + 1, first_line(exc))
                kept.append(line)
    finally:
        engine.dispose()
        if kept:
            with path.open("a", encoding="ascii") as handle:
                handle.write("".join(line + "\n" for line in kept))
        taken.unlink()
    return replayed, len(kept)
