"""Configuration of one upstream backend, its retries and its circuit breaker (YAML sections of
the gateway's and `bestroute collect`'s configuration, documented in docs/gateway.md)."""

import os
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from .._exceptions import ConfigError
from .._section import Section
from ..data import ModelPrice

ServerKind = Literal["openai", "vllm", "llama-cpp", "ollama", "replay", "other"]

# What each kind of server takes unless its backend says otherwise: OpenAI's chat models take
# tools, images and JSON output; vLLM and Ollama take tools (a model with a tool template) and
# JSON, but images only with a vision model; llama-cpp-python takes tools only with a
# function-calling chat format; replay backends answer with recorded text. "other" excludes
# nothing, as the gateway did before it knew capabilities.
KIND_DEFAULTS: dict[ServerKind, dict[str, bool]] = {
    "openai": {"tools": True, "images": True, "json_output": True, "streaming": True},
    "vllm": {"tools": True, "images": False, "json_output": True, "streaming": True},
    "llama-cpp": {"tools": False, "images": False, "json_output": True, "streaming": True},
    "ollama": {"tools": True, "images": False, "json_output": True, "streaming": True},
    "replay": {"tools": False, "images": False, "json_output": False, "streaming": True},
    "other": {"tools": True, "images": True, "json_output": True, "streaming": True},
}


class Capabilities(Section):
    """What a backend can take. A flag left out is its server kind's default (``KIND_DEFAULTS``);
    a size left out is not checked."""

    tools: bool | None = Field(default=None, description="tool (function) definitions and tool messages")
    images: bool | None = Field(default=None, description="image parts in messages")
    json_output: bool | None = Field(default=None, description="response_format json_object or json_schema")
    streaming: bool | None = Field(default=None, description="stream: true")
    context_tokens: int | None = Field(default=None, ge=1, description="context window: prompt and answer, in tokens")
    max_output_tokens: int | None = Field(default=None, ge=1, description="largest max_tokens it takes")


@dataclass(frozen=True)
class Needs:
    """What one request needs of a backend (``ChatCompletionRequest.needs``). ``input_tokens``
    is estimated before the call (characters / 4 and a few per message); ``output_tokens`` is the
    max_tokens the client asked for, if any."""

    tools: bool = False
    images: bool = False
    json_output: bool = False
    streaming: bool = False
    input_tokens: int = 0
    output_tokens: int | None = None


class BackendConfig(Section):
    """One OpenAI-compatible upstream. ``name`` is the model name the router and clients use."""

    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1, description="e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(default=None, description="upstream model id; default: name")
    api_key_env: str | None = Field(default=None, description="environment variable holding the key")
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)
    max_n: int = Field(default=5, ge=1, le=64)
    timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="per try: a whole answer, or a stream's first chunk"
    )
    stream_idle_s: float = Field(
        default=30.0, gt=0, le=3600, description="longest wait between two chunks once a stream has started"
    )
    supports_n: bool = Field(default=False, description="the upstream returns n choices for one request")
    max_response_bytes: int = Field(default=16 * 2**20, ge=1024, description="a larger answer is a 502")
    kind: ServerKind = Field(default="other", description="the server behind it: its capabilities' defaults")
    capabilities: Capabilities = Capabilities()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        _ = url.port  # a port that is not a number from 0 to 65535 raises ValueError
        return value

    @property
    def price(self) -> ModelPrice:
        return ModelPrice(input_usd_per_mtok=self.input_usd_per_mtok, output_usd_per_mtok=self.output_usd_per_mtok)

    def refusal(self, needs: Needs) -> str | None:
        """Why this backend cannot serve a request with ``needs`` (None: it can)."""
        declared, defaults = self.capabilities, KIND_DEFAULTS[self.kind]
        for flag, what in (
            ("tools", "tools"),
            ("images", "image input"),
            ("json_output", "JSON output"),
            ("streaming", "streaming"),
        ):
            own = getattr(declared, flag)
            if getattr(needs, flag) and not (own if own is not None else defaults[flag]):
                return f"no {what}"
        most = declared.max_output_tokens
        if most is not None and needs.output_tokens is not None and needs.output_tokens > most:
            return f"max_tokens {needs.output_tokens} is above its largest output ({most})"
        window = declared.context_tokens
        if window is not None and needs.input_tokens + (needs.output_tokens or 0) > window:
            return (
                f"the prompt (about {needs.input_tokens} tokens) and max_tokens ({needs.output_tokens or 0}) "
                f"exceed its context window ({window})"
            )
        return None

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


class RetryConfig(Section):
    attempts: int = Field(default=3, ge=1, le=10, description="tries per backend, first included")
    backoff_s: float = Field(default=0.2, ge=0, description="first wait; doubles each retry")
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="longest upstream Retry-After honoured; a longer one fails over at once"
    )
    budget_ratio: float = Field(
        default=0.2, ge=0, le=1, description="retries in flight per backend, as a share of its requests in flight"
    )
    budget_min: int = Field(default=3, ge=0, description="retries in flight always allowed per backend")


class CircuitConfig(Section):
    failures: int = Field(default=5, ge=1, description="consecutive failures that eject a backend")
    reset_s: float = Field(
        default=30.0,
        gt=0,
        description="first ejection's length; each ejection soon after another lasts one reset_s longer",
    )
    max_ejection_s: float = Field(default=300.0, gt=0, description="longest ejection")


class UpstreamSettings(Protocol):
    """What a caller of backends needs from its configuration (the gateway's satisfies it):
    the backends, their retries and circuit breaker, and a backend by name."""

    @property
    def backends(self) -> list[BackendConfig]: ...

    @property
    def retries(self) -> RetryConfig: ...

    @property
    def circuit_breaker(self) -> CircuitConfig: ...

    def backend(self, name: str) -> BackendConfig | None: ...
