"""The gateway's endpoints: thin handlers that read the request, call the service the app holds
(``request.app.state``) and shape its answer; errors are raised as GatewayErrors and mapped to
responses in one place (``_errors.error_response``)."""

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from .._exceptions import BestRouteError
from ._errors import InvalidRequest, PayloadTooLarge, error_response
from ._feedback import FeedbackService
from ._passthrough import pass_through
from ._planning import ROUTED_MODEL
from ._reload import Reloader
from ._requests import Access, constraints_of, deadline_of, read_json, unless_disconnected, unprocessable
from ._responses import JSONResponse
from ._workers import signal_others
from .protocol import ChatCompletionRequest, FeedbackRequest
from .serving import ChatService

CHAT_PATH = "/v1/chat/completions"

router = APIRouter()


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its JSON itself (to bound its size and
    depth before parsing), with the model's schema inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service  # swapped on reload; read once per request
    return service


def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


# Registered for the OpenAPI schema and other methods' 405; POSTs take the Gateway's direct path.
@router.post(
    CHAT_PATH,
    response_model=None,
    openapi_extra=_json_body(ChatCompletionRequest),
    summary="Chat completions, routed or direct",
)
async def chat_completions(request: Request) -> Response:
    client = _access(request).client(request)
    service = _service(request)
    budgets = service.recorder.budgets
    if budgets.active:
        budgets.admit(client)
    limits = service.config.limits
    document = await read_json(request, limits)
    deadline = deadline_of(request, service.config)
    try:
        chat = ChatCompletionRequest.model_validate(document)
    except ValidationError as exc:
        return error_response(unprocessable(exc.errors()))
    if len(chat.messages) > limits.max_messages:
        raise PayloadTooLarge(f"at most {limits.max_messages} messages per request", param="messages")
    plan = await service.plan(chat, deadline, constraints_of(request, chat), headers=request.headers, client=client)
    if chat.stream:
        headers, chunks = await unless_disconnected(request, service.stream(chat, plan, deadline, client))
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
    body, record = await unless_disconnected(request, service.complete(chat, plan, deadline, client))
    return JSONResponse(body, headers=record.headers())


async def _pass_through(request: Request, endpoint: str) -> Response:
    client = _access(request).client(request)
    service = _service(request)
    if service.recorder.budgets.active:
        service.recorder.budgets.admit(client)
    document = await read_json(request, service.config.limits)
    body, headers = await unless_disconnected(
        request, pass_through(service, endpoint, document, deadline_of(request, service.config), client)
    )
    return JSONResponse(body, headers=headers)


@router.post("/v1/embeddings", summary="Embeddings, passed through to a backend")
async def embeddings(request: Request) -> Response:
    return await _pass_through(request, "embeddings")


@router.post("/v1/completions", summary="Legacy completions, passed through to a backend")
async def completions(request: Request) -> Response:
    return await _pass_through(request, "completions")


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    _access(request).client(request)
    names = [ROUTED_MODEL] + [b.name for b in _service(request).config.backends]
    return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "bestroute"} for n in names]}


@router.post("/v1/feedback", openapi_extra=_json_body(FeedbackRequest))
async def post_feedback(request: Request) -> dict[str, Any]:
    client = _access(request).client(request)
    try:
        feedback = FeedbackRequest.model_validate(await read_json(request, _service(request).config.limits))
    except ValidationError as exc:
        raise unprocessable(exc.errors()) from None
    service: FeedbackService = request.app.state.feedback
    await service.record(feedback, client)
    return {"id": feedback.id, "object": "feedback", "status": "recorded"}


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Liveness for anyone; the details for admins."""
    if not _access(request).admits(request):
        return {"status": "ok"}
    service = _service(request)
    log = service.recorder.log
    return {
        "status": "ok",
        "pid": os.getpid(),
        "router": service.router.name,
        "reference": service.router.reference_.model,
        "artifact": service.artifact.describe(),
        "config_loaded_at": request.app.state.reloader.loaded_at,
        "backends": {n: u.breaker.state for n, u in service.upstreams.items()},
        "shadow": service.shadow.tallies.report(service.config.shadow),
        "decision_log": {
            "backlog": log.backlog,
            "repaired": log.repaired,
            "dead_letters": log.dead_letters.count,
            "dead_letter_path": str(log.dead_letters.path),
        },
    }


@router.post("/admin/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Reload the configuration and the router artifact; a bad file is refused (400) and the
    running ones keep serving."""
    reloader: Reloader = request.app.state.reloader
    try:
        service = await reloader.reload("POST /admin/reload")
    except BestRouteError as exc:
        raise InvalidRequest(f"reload refused, still serving the previous files: {exc}") from None
    # The other workers of a group reload on SIGHUP; a file they refuse is logged by each.
    return {"status": "reloaded", "artifact": service.artifact.describe(), "other_workers_signalled": signal_others()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
