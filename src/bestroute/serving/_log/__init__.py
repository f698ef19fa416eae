"""The decision log: one row per request and one per call it made, written by a background
thread so the response never waits for the database, and drained completely on a clean shutdown.
``schema`` holds the tables and typed rows, ``writer`` the writer and its dead letters,
``queries`` what the gateway reads back, ``export`` the routing-data export, ``stats`` the
traffic's figures (`bestroute log stats`), ``dashboard`` the dashboard's other reads, ``offpolicy`` a candidate router's estimated figures
on it (`bestroute log evaluate`)."""

from .dashboard import (
    PAGE_SIZE,
    Bucket,
    DecisionDetail,
    DecisionFilter,
    ModelStats,
    decision_detail,
    decision_page,
    first_logged,
    latency_percentiles,
    model_stats,
    traffic_series,
)
from .database import check_database, open_database
from .export import export_log, logged_prompts
from .offpolicy import LogEvaluation, evaluate_log
from .queries import decision_owner, latest_turn, newest_share_start, shadow_tallies, usage_by_client
from .schema import (
    REPLICA_ID_CHARS,
    REQUEST_ID_PREFIX,
    CallRow,
    DecisionRow,
    FeedbackRow,
    Row,
    ShadowRow,
    first_line,
    sanitize,
)
from .stats import OptionStats, TrafficStats, log_stats, traffic_stats
from .writer import DeadLetters, DecisionLog, replay_dead_letters

__all__ = [
    "PAGE_SIZE",
    "REPLICA_ID_CHARS",
    "REQUEST_ID_PREFIX",
    "Bucket",
    "CallRow",
    "DeadLetters",
    "DecisionDetail",
    "DecisionFilter",
    "DecisionLog",
    "DecisionRow",
    "FeedbackRow",
    "LogEvaluation",
    "ModelStats",
    "OptionStats",
    "Row",
    "ShadowRow",
    "TrafficStats",
    "check_database",
    "decision_detail",
    "decision_owner",
    "decision_page",
    "evaluate_log",
    "export_log",
    "first_line",
    "first_logged",
    "latency_percentiles",
    "latest_turn",
    "log_stats",
    "logged_prompts",
    "model_stats",
    "newest_share_start",
    "open_database",
    "replay_dead_letters",
    "sanitize",
    "shadow_tallies",
    "traffic_series",
    "traffic_stats",
    "usage_by_client",
]
