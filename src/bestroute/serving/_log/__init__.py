"""The decision log: one row per request and one per call it made, written by a background
thread so the response never waits for the database, and drained completely on a clean shutdown.
``schema`` holds the tables and typed rows, ``writer`` the writer and its dead letters,
``queries`` what the gateway reads back, ``export`` the routing-data export."""

from .export import export_log
from .queries import decision_owner, usage_by_client
from .schema import CallRow, DecisionRow, FeedbackRow, Row, check_database, sanitize
from .writer import DeadLetters, DecisionLog, replay_dead_letters

__all__ = [
    "CallRow",
    "DeadLetters",
    "DecisionLog",
    "DecisionRow",
    "FeedbackRow",
    "Row",
    "check_database",
    "decision_owner",
    "export_log",
    "replay_dead_letters",
    "sanitize",
    "usage_by_client",
]
