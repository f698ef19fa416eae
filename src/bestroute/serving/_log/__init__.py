"""The decision log: one row per request and one per call it made, written by a background
thread so the response never waits for the database, and drained completely on a clean shutdown.
``schema`` holds the tables and typed rows, ``writer`` the writer and its dead letters,
``queries`` what the gateway reads back, ``export`` the routing-data export, ``stats`` the
traffic's figures (`bestroute log stats`), ``offpolicy`` a candidate router's estimated figures
on it (`bestroute log evaluate`)."""

from .export import export_log
from .offpolicy import LogEvaluation, evaluate_log
from .queries import decision_owner, usage_by_client
from .schema import CallRow, DecisionRow, FeedbackRow, Row, ShadowRow, check_database, sanitize
from .stats import OptionStats, TrafficStats, log_stats, traffic_stats
from .writer import DeadLetters, DecisionLog, replay_dead_letters

__all__ = [
    "CallRow",
    "DeadLetters",
    "DecisionLog",
    "DecisionRow",
    "FeedbackRow",
    "LogEvaluation",
    "OptionStats",
    "Row",
    "ShadowRow",
    "TrafficStats",
    "check_database",
    "decision_owner",
    "evaluate_log",
    "export_log",
    "log_stats",
    "replay_dead_letters",
    "sanitize",
    "traffic_stats",
    "usage_by_client",
]
