"""The OpenAI-compatible routing gateway."""

from ._config import GatewayConfig, load_config
from ._log import DecisionLog, export_log, replay_dead_letters
from .app import create_app

__all__ = ["DecisionLog", "GatewayConfig", "create_app", "export_log", "load_config",
           "replay_dead_letters"]
