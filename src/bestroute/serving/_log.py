"""The decision log: one row per request, written by a background thread so the response never
waits for the database, and drained completely on a clean shutdown."""

import gzip
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from .._exceptions import BestRouteError
from ._config import GatewayConfig

_logger = logging.getLogger(__name__)

metadata = MetaData()

decisions = Table(
    "decisions", metadata,
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
)

feedback = Table(
    "feedback", metadata,
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


class DecisionLog:
    """Rows are appended in the event loop; a thread inserts what has accumulated every
    ``batch_window_s``. It wakes on a timer, not per row, so under load it takes the GIL
    a few times a second rather than once per request."""

    def __init__(self, url: str, *, batch_window_s: float = 0.05) -> None:
        self.batch_window_s = batch_window_s
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_wal)
        metadata.create_all(self.engine)
        self._pending: deque[dict[str, Any]] = deque()
        self._writing = threading.Lock()  # one batch at a time, from the thread or from flush()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append(row)  # atomic; never blocks the event loop

    def flush(self) -> None:
        """Block until every row written so far is in the database."""
        self._drain()

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        while not self._closing.wait(self.batch_window_s):
            self._drain(keep_on_error=True)
        self._drain()

    def _drain(self, *, keep_on_error: bool = False) -> None:
        with self._writing:
            rows = [self._pending.popleft() for _ in range(len(self._pending))]
            if not rows:
                return
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(decisions), rows)
            except SQLAlchemyError as exc:
                if not keep_on_error:
                    raise
                # The database is away: keep the rows, in order, for the next window.
                self._pending.extendleft(reversed(rows))
                _logger.warning("decision log: %d rows wait for the database (%s)", len(rows), type(exc).__name__)

    def exists(self, decision_id: str) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(select(decisions.c.id).where(decisions.c.id == decision_id)).first() is not None

    def add_feedback(self, decision_id: str, quality: float, comment: str | None) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(feedback), [{"decision_id": decision_id, "quality": quality,
                                                   "comment": comment, "created_at": time.time()}])


def export_log(config: GatewayConfig, out: Path) -> int:
    """Write answered requests that have a stored prompt and user feedback as routing data in
    the exchange format (quality = mean feedback); returns the number of prompts written."""
    engine = create_engine(config.decision_log.url)
    metadata.create_all(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(decisions).where(decisions.c.status == 200)).mappings().all()
        scores: dict[str, list[float]] = {}
        for decision_id, quality in connection.execute(select(feedback.c.decision_id, feedback.c.quality)):
            scores.setdefault(decision_id, []).append(quality)
    engine.dispose()
    usable = [r for r in rows if r["prompt"] is not None and r["id"] in scores]
    if not usable:
        raise BestRouteError("no logged request has both a stored prompt and feedback; turn on "
                             "decision_log.store_prompts and post feedback to /v1/feedback")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as handle:
        for r in usable:
            handle.write(json.dumps({"prompt_id": r["id"], "prompt": r["prompt"]}) + "\n")
    with gzip.open(out / "responses.jsonl.gz", "wt", encoding="utf-8") as handle:
        for r in usable:
            quality = scores[r["id"]]
            handle.write(json.dumps({
                "prompt_id": r["id"], "model": r["model"], "sample": 0, "quality": sum(quality) / len(quality),
                "input_tokens": r["call_input_tokens"] or 0, "output_tokens": r["response_tokens"] or 0,
                "response": r["response"]}) + "\n")
    models = {b.name: {"input_usd_per_mtok": b.input_usd_per_mtok, "output_usd_per_mtok": b.output_usd_per_mtok}
              for b in config.backends}
    (out / "models.json").write_text(json.dumps({"models": models}, indent=1))
    return len(usable)
