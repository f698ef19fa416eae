"""Gateway errors: each carries its HTTP status and OpenAI error type; one handler maps them."""


class GatewayError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class InvalidRequest(GatewayError):
    status, type = 400, "invalid_request_error"


class Unauthorized(GatewayError):
    status, type = 401, "authentication_error"


class ModelNotFound(GatewayError):
    status, type = 404, "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status, type = 413, "invalid_request_error"


class Unprocessable(GatewayError):
    status, type = 422, "invalid_request_error"


class UpstreamFailed(GatewayError):
    """Every option the router could fall back to failed."""

    status, type = 502, "upstream_error"


class LogUnavailable(GatewayError):
    """The decision log's database cannot be reached (feedback needs it)."""

    status, type = 503, "service_unavailable"


class ClientDisconnected(GatewayError):
    """The client went away; nothing can be sent (499, as nginx logs it)."""

    status, type = 499, "client_closed_request"
