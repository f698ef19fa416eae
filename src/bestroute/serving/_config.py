"""The gateway's YAML configuration (documented in docs/gateway.md)."""

import math
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .._exceptions import ConfigError
from ..backends import BackendConfig, CircuitConfig, RetryConfig, Section
from ..data import ARM_SEPARATOR
from ..selection import SelectorSpec
from ..strategies import Strategy


class TimeoutConfig(Section):
    request_s: float = Field(default=300.0, gt=0, description="deadline of a request across all its attempts")
    max_request_s: float = Field(
        default=900.0, gt=0, description="largest deadline a client may ask for (header x-bestroute-timeout)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "TimeoutConfig":
        if self.request_s > self.max_request_s:
            raise ValueError("request_s is larger than max_request_s")
        return self


class LimitsConfig(Section):
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_messages: int = Field(default=256, ge=1)
    max_json_depth: int = Field(default=64, ge=4, le=512, description="nesting of the request body")
    cpu_workers: int = Field(
        default=2, ge=1, le=64, description="threads that route prompts and judge samples, off the event loop"
    )
    max_connections: int = Field(
        default=4096, ge=2, description="open client connections; beyond it the oldest idle one is closed, or 503"
    )
    max_concurrent_requests: int = Field(
        default=1024, ge=1, description="chat requests in progress; beyond it a fast 503"
    )
    header_timeout_s: float = Field(default=10.0, gt=0, description="to receive a request's headers")
    body_timeout_s: float = Field(default=30.0, gt=0, description="to receive a request's body")
    keep_alive_s: int = Field(default=5, ge=1, description="an idle keep-alive connection is closed after")


# Seconds between the decision log's inserts. Each batch is a transaction with its rollup upserts,
# whose cost hardly depends on the rows it holds: at 400 requests/s, 0.25 s against 0.05 s took
# about 6% off the gateway's CPU a request (docs/benchmarks.md). A killed process loses one window.
LOG_BATCH_WINDOW_S = 0.25


class DecisionLogConfig(Section):
    url: str = Field(default="sqlite:///bestroute-decisions.db", description="SQLAlchemy URL")
    store_prompts: bool = Field(default=False, description="keep prompt and response texts")
    dead_letter_path: Path = Field(
        default=Path("bestroute-dead-letters.jsonl"),
        description="rows the database refused, or that could not wait for it",
    )
    max_backlog: int = Field(default=100_000, ge=1, description="rows kept in memory while the database is away")
    batch_window_s: float = Field(
        default=LOG_BATCH_WINDOW_S,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="seconds between inserts: a longer window costs less CPU a request; a killed process loses one",
    )
    minute_rollup_days: float | None = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="days the rollups' minute rows are kept (the hours are kept forever); null: forever",
    )

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(f"{value!r} is not a database URL (e.g. sqlite:///decisions.db)") from None
        return value


class BudgetLimits(Section):
    requests_per_minute: int | None = Field(default=None, ge=1)
    usd_per_day: float | None = Field(default=None, gt=0, description="from the cost the gateway computes")


class ShadowConfig(Section):
    """Shadow checks: a sampled share of the requests a cheaper option answered is also sent to
    ``against`` after the client has its answer, and the two answers are compared."""

    rate: float = Field(default=0.0, ge=0, le=1, description="share of cheaper-option answers checked")
    against: str | None = Field(default=None, description="backend (or backend@strategy); default: the reference")
    target: float = Field(default=0.99, gt=0, le=1, description="least agreement with it an option may show")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="of the interval around each option's agreement")
    min_checks: int = Field(default=30, ge=1, description="checks of an option before its interval is judged")
    on_breach: Literal["warn", "avoid"] = Field(
        default="warn", description="avoid: no longer route to an option whose interval is below the target"
    )
    timeout_s: float = Field(default=60.0, gt=0, description="time a shadow call may take")
    max_in_flight: int = Field(default=100, ge=1, description="shadow calls at once; more are skipped and counted")
    shared: bool = Field(
        default=False,
        description="judge every replica's checks of the last window_s, read from the decision log's database",
    )
    window_s: float = Field(default=86_400.0, gt=0, description="shared: the checked requests' window")
    refresh_s: float = Field(default=5.0, gt=0, description="shared: how often a replica reads the checks")


class ExploreConfig(Section):
    """Exploration with logged propensities, for off-policy evaluation: with probability
    ``rate`` a routed request takes an option drawn uniformly from the router's choice and the
    ``width`` servable options on each side of it in cost (never one costlier than the
    reference); every routed row logs the probability its option was taken with."""

    rate: float = Field(default=0.0, ge=0, le=1, description="share of routed requests that explore")
    width: int = Field(default=1, ge=1, le=10, description="options on each side of the choice, in cost order")
    seed: int | None = Field(default=None, description="for a reproducible draw (tests, simulations)")


class BudgetConfig(BudgetLimits):
    """Limits per client key (for every key; ``per_key`` overrides by the key's fingerprint)."""

    per_key: dict[str, BudgetLimits] = Field(
        default_factory=dict, description="fingerprint (client_key_id in the decision log) -> limits"
    )
    shared: bool = Field(default=False, description="count every replica's usage, from the decision log's database")
    refresh_s: float = Field(default=2.0, gt=0, description="how often a replica reads the shared usage")


class AdminConfig(Section):
    """Who may read /metrics, /healthz's details and the API docs (/docs, /redoc, /openapi.json)."""

    api_keys_env: str | None = Field(
        default=None, description="variable with comma-separated admin keys; unset: the client keys"
    )
    open: bool = Field(default=False, description="no key needed (e.g. the port is only on a private network)")


class PassthroughConfig(Section):
    """The backends /v1/embeddings and /v1/completions go to when a request's ``model`` names no
    backend (a request naming one goes to it); None: such a request is a 404."""

    embeddings: str | None = Field(default=None, description="backend for /v1/embeddings")
    completions: str | None = Field(default=None, description="backend for /v1/completions")


class AffinityConfig(Section):
    """Conversation affinity: a routed turn of a conversation the gateway has answered before goes
    to the model that answered it last (its first routed turn's, unless a turn moved it), while
    that model can serve the turn and the router does not escalate past it. A conversation is
    named by the ``header`` or, without it, found by its earlier messages (the previous turn's
    messages and answer); replicas find each other's conversations in the decision log."""

    enabled: bool = Field(default=True, description="keep conversations on one model")
    header: str = Field(
        default="x-bestroute-conversation", min_length=1, description="request header naming a conversation"
    )
    by_history: bool = Field(default=True, description="without the header, recognise a turn by its earlier messages")
    ttl_s: float = Field(default=86_400.0, gt=0, description="a conversation idle longer starts afresh")
    cache_size: int = Field(default=100_000, ge=1, description="conversations each replica remembers without the log")

    @field_validator("header")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        return value.lower()


class GuardConfig(Section):
    """The router artifact's out-of-domain guard (prompts far from its training prompts)."""

    out_of_domain: Literal["reference", "flag", "off"] = Field(
        default="reference",
        description="reference: send them to the reference and flag them (what the offline evaluation "
        "assumes); flag: only flag them; off: do not look",
    )


class ScreenConfig(Section):
    """A safety screen before routing. ``kind`` patterns: regular expressions (and, with
    ``builtin_patterns``, common jailbreak and prompt-injection phrasings) matched against the
    messages; moderation: the ``backend``'s /moderations endpoint (OpenAI's format); guard_model:
    a chat ``backend`` (e.g. Llama Guard) whose answer matching ``unsafe`` flags the request."""

    kind: Literal["patterns", "moderation", "guard_model"] | None = Field(default=None, description="None: no screen")
    patterns: list[str] = Field(default_factory=list, description="regular expressions, case-insensitive")
    builtin_patterns: bool = Field(default=True, description="patterns: also the built-in jailbreak phrasings")
    backend: str | None = Field(default=None, description="moderation or guard_model: the backend to ask")
    categories: list[str] | None = Field(
        default=None, description="moderation: only these categories flag a request (None: its own verdict)"
    )
    unsafe: str = Field(default=r"^\s*unsafe\b", description="guard_model: an answer matching this flags the request")
    on_flag: Literal["refuse", "redirect"] = Field(
        default="refuse", description="refuse: a 400; redirect: to redirect_to"
    )
    redirect_to: str | None = Field(default=None, description="on_flag redirect: the backend flagged requests go to")
    on_error: Literal["refuse", "allow"] = Field(
        default="refuse", description="when the screen cannot answer: a 503, or let the request through"
    )
    timeout_s: float = Field(default=10.0, gt=0, description="time the screen may take")

    @model_validator(mode="after")
    def _complete(self) -> "ScreenConfig":
        if self.kind in ("moderation", "guard_model") and self.backend is None:
            raise ValueError(f"screen kind {self.kind!r} needs a backend")
        if self.kind == "patterns" and not (self.patterns or self.builtin_patterns):
            raise ValueError("screen kind 'patterns' needs patterns or builtin_patterns")
        if self.on_flag == "redirect" and self.redirect_to is None:
            raise ValueError("screen on_flag 'redirect' needs redirect_to")
        for pattern in [*self.patterns, self.unsafe]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"screen pattern {pattern!r} is not a regular expression ({exc})") from None
        return self


class GatewayConfig(Section):
    router: Path | None = Field(
        default=None, description="router artifact from `bestroute train` (needed by serve, not by collect)"
    )
    threshold: float | None = Field(default=None, ge=0, description="default knob; None: the artifact's default")
    backends: list[BackendConfig] = Field(min_length=1)
    selector: SelectorSpec = SelectorSpec()
    client_api_keys_env: str | None = Field(
        default=None, description="variable with comma-separated client keys; unset: no auth"
    )
    retries: RetryConfig = RetryConfig()
    circuit_breaker: CircuitConfig = CircuitConfig()
    limits: LimitsConfig = LimitsConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    admin: AdminConfig = AdminConfig()
    budgets: BudgetConfig = BudgetConfig()
    shadow: ShadowConfig = ShadowConfig()
    explore: ExploreConfig = ExploreConfig()
    passthrough: PassthroughConfig = PassthroughConfig()
    affinity: AffinityConfig = AffinityConfig()
    guard: GuardConfig = GuardConfig()
    screen: ScreenConfig = ScreenConfig()
    strategies: list[Strategy] = Field(
        default_factory=list, description="prompt strategies; a router's backend@strategy options use them"
    )
    reload_poll_s: float = Field(
        default=2.0,
        ge=0,
        description="check the configuration and router files "
        "for changes this often (0: only SIGHUP and "
        "POST /admin/reload)",
    )

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayConfig":
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate backend names: {', '.join(duplicates)}")
        with_separator = [n for n in names if ARM_SEPARATOR in n]
        if with_separator:
            raise ValueError(f"backend name {with_separator[0]!r} has {ARM_SEPARATOR!r}, which names a strategy")
        strategies = [s.name for s in self.strategies]
        duplicates = sorted({n for n in strategies if strategies.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate strategy names: {', '.join(duplicates)}")
        if self.selector.kind == "oracle":
            raise ValueError("selector kind 'oracle' picks by ground-truth quality: it is an offline bound only")
        for endpoint, backend in self.passthrough:
            if backend is not None and backend not in names:
                raise ValueError(f"passthrough.{endpoint}: {backend!r} is not a configured backend")
        for setting, backend in (
            ("screen.backend", self.screen.backend),
            ("screen.redirect_to", self.screen.redirect_to),
        ):
            if backend is not None and backend not in names:
                raise ValueError(f"{setting}: {backend!r} is not a configured backend")
        if self.selector.kind == "judge" and self.selector.backend not in names:
            raise ValueError(f"selector backend {self.selector.backend!r} is not a configured backend")
        return self

    def backend(self, name: str) -> BackendConfig | None:
        return next((b for b in self.backends if b.name == name), None)

    def client_keys(self) -> list[str]:
        return _keys("client_api_keys_env", self.client_api_keys_env)

    def admin_keys(self) -> list[str] | None:
        """Keys for the admin endpoints; None: no key needed."""
        if self.admin.open:
            return None
        keys = _keys("admin.api_keys_env", self.admin.api_keys_env) or self.client_keys()
        return keys or None


def _keys(setting: str, variable: str | None) -> list[str]:
    if variable is None:
        return []
    keys = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
    if not keys:
        raise ConfigError(f"{setting}: environment variable {variable} is empty")
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
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}: {message}") from exc
    if config.router is not None and not config.router.is_absolute():
        config = config.model_copy(update={"router": path.parent / config.router})
    database = make_url(config.decision_log.url)
    if (
        database.get_backend_name() == "sqlite"
        and database.database not in (None, "", ":memory:")
        and not Path(database.database).is_absolute()
    ):
        url = database.set(database=str(path.parent / database.database)).render_as_string(hide_password=False)
        config = config.model_copy(update={"decision_log": config.decision_log.model_copy(update={"url": url})})
    if not config.decision_log.dead_letter_path.is_absolute():
        log = config.decision_log.model_copy(
            update={"dead_letter_path": path.parent / config.decision_log.dead_letter_path}
        )
        config = config.model_copy(update={"decision_log": log})
    if config.selector.path is not None and not config.selector.path.is_absolute():
        selector = config.selector.model_copy(update={"path": path.parent / config.selector.path})
        config = config.model_copy(update={"selector": selector})
    return config
