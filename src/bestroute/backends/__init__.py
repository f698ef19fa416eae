"""Upstream backends: their configuration and prices, the client with retries, deadlines and a
circuit breaker, and the reward-model and judge services. Used by the gateway and by
`bestroute collect`."""

from .._section import Section
from ._clients import EndpointSelector, JudgeSelector, RewardClient, ask_judge
from ._config import (
    KIND_DEFAULTS,
    BackendConfig,
    Capabilities,
    CircuitConfig,
    Needs,
    RetryConfig,
    ServerKind,
    UpstreamSettings,
)
from ._local_models import PACKAGED_MODELS, PackagedModel, model_path
from ._upstream import (
    FIRST_SAMPLE_HEADER,
    NO_DEADLINE,
    STREAM_ERRORS,
    CircuitBreaker,
    Completion,
    Deadline,
    DeadlinePassed,
    Relayed,
    Upstream,
    UpstreamError,
    UpstreamRejected,
    answer_text,
    estimate_tokens,
    split_tokens,
    usage_tokens,
)

__all__ = [
    "FIRST_SAMPLE_HEADER",
    "KIND_DEFAULTS",
    "NO_DEADLINE",
    "PACKAGED_MODELS",
    "STREAM_ERRORS",
    "BackendConfig",
    "Capabilities",
    "CircuitBreaker",
    "CircuitConfig",
    "Completion",
    "Deadline",
    "DeadlinePassed",
    "EndpointSelector",
    "JudgeSelector",
    "Needs",
    "PackagedModel",
    "Relayed",
    "RetryConfig",
    "RewardClient",
    "Section",
    "ServerKind",
    "Upstream",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamSettings",
    "answer_text",
    "ask_judge",
    "estimate_tokens",
    "model_path",
    "split_tokens",
    "usage_tokens",
]
