"""The OpenAI-compatible routing gateway."""

from ._config import GatewayConfig, load_config
from ._log import DecisionLog, export_log, replay_dead_letters
from ._server import run_gateway, server_config
from .app import Gateway, create_app

__all__ = [
    "DecisionLog",
    "Gateway",
    "GatewayConfig",
    "create_app",
    "export_log",
    "load_config",
    "replay_dead_letters",
    "run_gateway",
    "server_config",
]
