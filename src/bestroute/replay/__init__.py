"""Replay backends: an OpenAI-compatible server that answers each model's chat requests with
that model's recorded responses in a routing dataset (tokens and all), so the gateway can route
traffic whose truth is known, offline."""

from ._server import Latency, ReplayData, create_replay_app, parse_latency

__all__ = ["Latency", "ReplayData", "create_replay_app", "parse_latency"]
