"""Upstream backends: their configuration and prices, the client with retries, deadlines and a
circuit breaker, and the reward-model and judge services. Used by the gateway and by
`bestroute collect`."""

from .._section import Section
from ._clients import EndpointSelector, JudgeSelector, RewardClient, ask_judge
from ._config import BackendConfig, CircuitConfig, RetryConfig, UpstreamSettings
from ._local_models import PACKAGED_MODELS, PackagedModel, model_path
from ._upstream import (
    FIRST_SAMPLE_HEADER,
    NO_DEADLINE,
    STREAM_ERRORS,
    CircuitBreaker,
    Completion,
    Deadline,
    DeadlinePassed,
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
    "NO_DEADLINE",
    "PACKAGED_MODELS",
    "STREAM_ERRORS",
    "BackendConfig",
    "CircuitBreaker",
    "CircuitConfig",
    "Completion",
    "Deadline",
    "DeadlinePassed",
    "EndpointSelector",
    "JudgeSelector",
    "PackagedModel",
    "RetryConfig",
    "RewardClient",
    "Section",
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
