"""The rest of the OpenAI surface a drop-in gateway needs: /v1/embeddings and /v1/completions go,
unrouted, to the backend their ``model`` names (else ``passthrough``'s default for the endpoint),
with that backend's retries and circuit breaker; their cost is priced from the usage the backend
reports and counted in the metrics and the client's budget. They get no decision-log row: there
is no decision to log. The safety screen judges a completion's prompts as it judges a chat's user
messages (else /v1/completions would be the way around it); embeddings generate nothing and are
not screened."""

import time
from typing import Any

from ..backends import Deadline, Upstream, UpstreamError, UpstreamRejected
from ._errors import InvalidRequest, ModelNotFound, UpstreamFailed, UpstreamRejectedRequest
from ._sampling import hold_against
from .serving import ChatService

ENDPOINTS = {"embeddings": "/embeddings", "completions": "/completions"}


def _backend(service: ChatService, endpoint: str, document: Any) -> tuple[Upstream, dict[str, Any]]:
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required: a configured backend's name", param="model")
    if endpoint == "completions" and document.get("stream") is True:
        raise InvalidRequest("/v1/completions is passed through without streaming: send stream false", param="stream")
    default = getattr(service.config.passthrough, endpoint)
    upstream = service.upstreams.get(model) or (service.upstreams.get(default) if default is not None else None)
    if upstream is None:
        raise ModelNotFound(
            f"model {model!r} is not a configured backend and passthrough.{endpoint} names none",
            param="model",
            code="model_not_found",
        )
    return upstream, {k: v for k, v in document.items() if k != "model"}


def _prompts(document: dict[str, Any]) -> list[str]:
    """A completion request's text prompts, for the screen: token ids cannot be read."""
    prompt = document.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    if not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest(
            "the gateway's safety screen reads text: send prompt as a string or a list of strings", param="prompt"
        )
    return prompts


async def pass_through(
    service: ChatService, endpoint: str, document: Any, deadline: Deadline, client: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Send ``document`` to ``endpoint`` of its backend (a completion screened first); the
    backend's answer and the headers to return."""
    upstream, body = _backend(service, endpoint, document)
    screened = None
    if endpoint == "completions" and service.screen.active:
        screened = await service.screen_prompts(_prompts(body), deadline)
        if screened is not None and screened.action == "redirected":
            assert service.config.screen.redirect_to is not None  # the configuration requires it
            upstream = service.upstreams[service.config.screen.redirect_to]
    if not upstream.breaker.allow():
        raise UpstreamFailed(f"backend {upstream.name!r} is ejected after repeated failures; retry shortly")
    started = time.monotonic()
    try:
        relayed = await upstream.relay(ENDPOINTS[endpoint], body, deadline)
    except UpstreamRejected as error:
        raise UpstreamRejectedRequest.of(error) from None
    except UpstreamError as error:
        hold_against(upstream, error, started, service.metrics)
        service.metrics.observe_request(model=upstream.name, n=1, status=502, seconds=time.monotonic() - started)
        raise UpstreamFailed(f"{upstream.name}: {error.reason}") from None
    upstream.breaker.record_success()
    cost = upstream.cost(relayed.prompt_tokens, relayed.completion_tokens)
    service.metrics.observe_call(
        model=upstream.name, input_tokens=relayed.prompt_tokens, output_tokens=relayed.completion_tokens, cost_usd=cost
    )
    service.metrics.observe_request(model=upstream.name, n=1, status=200, seconds=time.monotonic() - started)
    if cost:
        service.recorder.budgets.charge(client, cost)
    headers = {"x-bestroute-model": upstream.name, "x-bestroute-cost-usd": f"{cost:.8f}"}
    if screened is not None:
        headers["x-bestroute-screen"] = screened.action
    if relayed.tokens_estimated:
        headers["x-bestroute-usage-estimated"] = "true"
    return relayed.document, headers
