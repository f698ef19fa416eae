"""The OpenAI-compatible routing gateway."""

from ._config import GatewayConfig, load_config
from ._log import (
    DecisionLog,
    LogEvaluation,
    TrafficStats,
    check_database,
    evaluate_log,
    export_log,
    log_stats,
    logged_prompts,
    replay_dead_letters,
)
from ._retrain import RetrainReport, retrain
from ._server import run_gateway, run_workers, server_config
from .app import Gateway, create_app

__all__ = [
    "DecisionLog",
    "Gateway",
    "GatewayConfig",
    "LogEvaluation",
    "RetrainReport",
    "TrafficStats",
    "check_database",
    "create_app",
    "evaluate_log",
    "export_log",
    "load_config",
    "log_stats",
    "logged_prompts",
    "replay_dead_letters",
    "retrain",
    "run_gateway",
    "run_workers",
    "server_config",
]
