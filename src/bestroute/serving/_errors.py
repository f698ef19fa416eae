"""Gateway errors: each carries its HTTP status and OpenAI error type; one handler maps them."""

import math

from .._exceptions import BestRouteError
from ..backends import UpstreamRejected
from ._responses import JSONResponse
from .protocol import ErrorBody, ErrorResponse


class GatewayError(BestRouteError):
    status = 500
    type = "server_error"
    headers: dict[str, str] = {}  # noqa: RUF012 -- read-only; subclasses replace it

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class InvalidRequest(GatewayError):
    status, type = 400, "invalid_request_error"


class Unauthorized(GatewayError):
    status, type = 401, "authentication_error"


class ModelNotFound(GatewayError):
    status, type = 404, "invalid_request_error"


class NotFound(GatewayError):
    status, type = 404, "invalid_request_error"


class RequestTimeout(GatewayError):
    """The client did not send its request body in time."""

    status, type = 408, "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status, type = 413, "invalid_request_error"


class Unprocessable(GatewayError):
    status, type = 422, "invalid_request_error"


class UpstreamFailed(GatewayError):
    """Every option the router could fall back to failed."""

    status, type = 502, "upstream_error"


class UpstreamRejectedRequest(GatewayError):
    """A backend refused the request itself (e.g. 400 context_length_exceeded): the client gets the
    backend's status and error, as if it had called the backend directly."""

    type = "invalid_request_error"

    def __init__(
        self, status: int, message: str, *, type_: str | None, param: str | None, code: str | None, backend: str
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status, self.type = status, type_ or self.type
        self.headers = {"x-bestroute-model": backend}

    @classmethod
    def of(cls, error: UpstreamRejected) -> "UpstreamRejectedRequest":
        return cls(
            error.status,
            error.error["message"] or str(error),
            type_=error.error["type"],
            param=error.error["param"],
            code=error.error["code"],
            backend=error.backend,
        )


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before any option answered."""

    status, type = 504, "timeout"


class Overloaded(GatewayError):
    """More requests in progress than ``limits.max_concurrent_requests``: try again shortly."""

    status, type = 503, "service_unavailable"
    headers = {"retry-after": "1"}  # noqa: RUF012


class RateLimited(GatewayError):
    """A client key is over its requests per minute or its USD per day."""

    status, type = 429, "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float, code: str) -> None:
        super().__init__(message, code=code)
        self.headers = {"retry-after": str(max(1, math.ceil(retry_after)))}


class LogUnavailable(GatewayError):
    """The decision log's database cannot be reached (feedback needs it)."""

    status, type = 503, "service_unavailable"


class ContentFlagged(GatewayError):
    """The safety screen flagged the request and ``screen.on_flag`` is refuse."""

    status, type = 400, "invalid_request_error"


class ScreenUnavailable(GatewayError):
    """The safety screen could not judge the request and ``screen.on_error`` is refuse."""

    status, type = 503, "service_unavailable"


class ClientDisconnected(GatewayError):
    """The client went away; nothing can be sent (499, as nginx logs it)."""

    status, type = 499, "client_closed_request"


def error_json(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_response(exc: Exception) -> JSONResponse:
    """The one mapping of errors to responses: a GatewayError carries its status and type;
    anything else is a 500 with no stack trace leaving the process."""
    if isinstance(exc, GatewayError):
        return error_json(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)
    return error_json(500, "internal error", "server_error")
