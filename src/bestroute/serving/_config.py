"""The gateway's YAML configuration (documented in docs/gateway.md)."""

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._exceptions import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Section):
    """One OpenAI-compatible upstream. ``name`` is the model name the router and clients use."""

    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1, description="e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(default=None, description="upstream model id; default: name")
    api_key_env: str | None = Field(default=None, description="environment variable holding the key")
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)
    max_n: int = Field(default=5, ge=1, le=64)
    timeout_s: float = Field(default=60.0, gt=0)
    supports_n: bool = Field(default=False, description="the upstream returns n choices for one request")

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(f"backend {self.name!r}: environment variable {self.api_key_env} is not set")
        return value


class SelectorConfig(_Section):
    """How best-of-n keeps one response."""

    kind: Literal["majority", "consensus", "reward", "reward-model", "judge"] = "consensus"
    url: str | None = Field(default=None, description="reward: POST {prompt, responses} -> {scores}")
    path: Path | None = Field(default=None, description="reward-model: artifact from `bestroute train-reward`")
    backend: str | None = Field(default=None, description="judge: the backend that judges")
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _needs_target(self) -> "SelectorConfig":
        if self.kind == "reward" and not self.url:
            raise ValueError("selector kind 'reward' needs url")
        if self.kind == "reward-model" and not self.path:
            raise ValueError("selector kind 'reward-model' needs path")
        if self.kind == "judge" and not self.backend:
            raise ValueError("selector kind 'judge' needs backend")
        return self


class RetryConfig(_Section):
    attempts: int = Field(default=3, ge=1, le=10, description="tries per backend, first included")
    backoff_s: float = Field(default=0.2, ge=0, description="first wait; doubles each retry")


class CircuitConfig(_Section):
    failures: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    reset_s: float = Field(default=30.0, gt=0, description="seconds before a probe request is let through")


class LimitsConfig(_Section):
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_messages: int = Field(default=256, ge=1)
    max_json_depth: int = Field(default=64, ge=4, le=512, description="nesting of the request body")


class DecisionLogConfig(_Section):
    url: str = Field(default="sqlite:///bestroute-decisions.db", description="SQLAlchemy URL")
    store_prompts: bool = Field(default=False, description="keep prompt and response texts")
    dead_letter_path: Path = Field(default=Path("bestroute-dead-letters.jsonl"),
                                   description="rows the database refused, or that could not wait for it")
    max_backlog: int = Field(default=100_000, ge=1, description="rows kept in memory while the database is away")


class GatewayConfig(_Section):
    router: Path | None = Field(default=None, description="router artifact from `bestroute train` "
                                                           "(needed by serve, not by collect)")
    threshold: float | None = Field(default=None, description="default knob; None: the artifact's default")
    backends: list[BackendConfig] = Field(min_length=1)
    selector: SelectorConfig = SelectorConfig()
    client_api_keys_env: str | None = Field(
        default=None, description="variable with comma-separated client keys; unset: no auth")
    retries: RetryConfig = RetryConfig()
    circuit_breaker: CircuitConfig = CircuitConfig()
    limits: LimitsConfig = LimitsConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayConfig":
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate backend names: {', '.join(duplicates)}")
        if self.selector.kind == "judge" and self.selector.backend not in names:
            raise ValueError(f"selector backend {self.selector.backend!r} is not a configured backend")
        return self

    def backend(self, name: str) -> BackendConfig | None:
        return next((b for b in self.backends if b.name == name), None)

    def client_keys(self) -> list[str]:
        if self.client_api_keys_env is None:
            return []
        raw = os.environ.get(self.client_api_keys_env, "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"client_api_keys_env: environment variable {self.client_api_keys_env} is empty")
        return keys


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate the YAML file; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = GatewayConfig.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
    if config.router is not None and not config.router.is_absolute():
        config = config.model_copy(update={"router": path.parent / config.router})
    if not config.decision_log.dead_letter_path.is_absolute():
        log = config.decision_log.model_copy(
            update={"dead_letter_path": path.parent / config.decision_log.dead_letter_path})
        config = config.model_copy(update={"decision_log": log})
    if config.selector.path is not None and not config.selector.path.is_absolute():
        selector = config.selector.model_copy(update={"path": path.parent / config.selector.path})
        config = config.model_copy(update={"selector": selector})
    return config
