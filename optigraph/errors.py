"""The one exception hierarchy of optigraph. The API edge maps each to an OpenAI-style error body."""

from __future__ import annotations

from typing import Any


class OptigraphError(Exception):
    """Base error: carries the HTTP status and the OpenAI error fields."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(OptigraphError):
    """The client sent something we cannot serve (400)."""

    status = 400
    type = "invalid_request_error"


class ExpressionError(InvalidRequest):
    """A malformed approach expression; `position` is the 0-based offset of the problem."""

    code = "invalid_approach_expression"

    def __init__(self, message: str, *, expression: str, position: int) -> None:
        super().__init__(f"{message} at position {position} in {expression!r}", param="model")
        self.expression = expression
        self.position = position


class ExpressionTooLarge(InvalidRequest):
    """An approach expression over one of the server's size limits; the message names the limit."""

    code = "expression_too_large"


class RequestTooLarge(InvalidRequest):
    """A request body over the server's size limit (413)."""

    status = 413
    code = "request_too_large"


class UnknownApproach(InvalidRequest):
    code = "unknown_approach"


class AuthenticationError(OptigraphError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(OptigraphError):
    """The caller is known but its scopes do not allow this (403); `scope` names the one missing."""

    status = 403
    type = "permission_error"
    code = "insufficient_scope"

    def __init__(self, message: str, *, scope: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.scope = scope


class RateLimited(OptigraphError):
    """A tenant is over one of its limits (429); `retry_after` is the seconds until it may try again."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NotFound(OptigraphError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class UpstreamError(OptigraphError):
    """The upstream LLM failed. `upstream_status` is its HTTP status when it answered."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retryable = retryable


class UpstreamInvalidResponse(UpstreamError):
    """The upstream answered, but not with what the API promises (a body that is not JSON, no choices)."""

    code = "upstream_invalid_response"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class UpstreamUnavailable(UpstreamError):
    """The upstream's circuit breaker is open (503): recent calls failed, so none is sent until the
    cool-down ends; `retry_after_s` is when a probe may go (sent as `Retry-After`)."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BudgetExceeded(OptigraphError):
    """A run hit its per-request cap on upstream calls or tokens."""

    status = 400
    type = "invalid_request_error"
    code = "budget_exceeded"


class RunCancelled(OptigraphError):
    """The run was cancelled because its client disconnected (499, the status nginx logs for it);
    it is stored as `cancelled` and can be resumed."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


class RunInterrupted(OptigraphError):
    """The server shut down before the run finished (503); it is stored as `interrupted` and can be
    resumed on this server once it is back, or on another one that shares its database."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"


class ApproachLoadError(OptigraphError):
    """An approach or plugin from outside optigraph could not be loaded (a start-up error)."""

    code = "approach_load_error"


class McpConfigError(OptigraphError):
    """The server's MCP config file (--mcp-config) is missing, unreadable or malformed: the operator's
    mistake, named with the file and key in the message."""

    code = "mcp_config_invalid"


class ProxyConfigError(OptigraphError):
    """The proxy's providers file (--proxy-config) is missing, unreadable or malformed: the operator's
    mistake, named with the file and key in the message."""

    code = "proxy_config_invalid"


class PrivacyKeyChanged(OptigraphError):
    """A stored run's privacy mapping was encrypted with another key than the server's (409): the
    server restarted without a fixed privacy key, so the run's answer cannot be restored."""

    status = 409
    type = "invalid_request_error"
    code = "privacy_key_changed"


class PluginFailed(OptigraphError):
    """An OptILLM plugin file's `run` raised or returned something unusable (502: the answer could not be
    made; the run is stored as failed with this message)."""

    status = 502
    type = "plugin_error"
    code = "plugin_failed"
