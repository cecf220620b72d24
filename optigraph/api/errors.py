"""Every error leaves the server as an OpenAI-style body: {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from optigraph.errors import OptigraphError, PermissionDenied, RateLimited, UpstreamUnavailable

log = logging.getLogger("optigraph.api")


class ORJSONResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_headers(request: Request, exc: OptigraphError) -> dict[str, str] | None:
    """The headers an error needs: `WWW-Authenticate` on a 401 (with the RFC 9728 metadata URL when
    the server takes OAuth tokens) and on a missing scope (RFC 6750), `Retry-After` on a 429."""
    if exc.status == 401:
        if not getattr(request.app.state.settings, "oauth_issuer", None):
            return {"www-authenticate": "Bearer"}
        metadata = str(request.base_url).rstrip("/") + "/.well-known/oauth-protected-resource"
        error = ', error="invalid_token"' if exc.code == "invalid_token" else ""
        return {"www-authenticate": f'Bearer resource_metadata="{metadata}"{error}'}
    if isinstance(exc, PermissionDenied):
        return {"www-authenticate": f'Bearer error="insufficient_scope", scope="{exc.scope}"'}
    if isinstance(exc, RateLimited):
        return {"retry-after": str(exc.retry_after)}
    if isinstance(exc, UpstreamUnavailable):  # when the upstream's breaker lets a probe through, whole seconds
        return {"retry-after": str(max(1, math.ceil(exc.retry_after_s)))}
    return None


def error_response(request: Request, exc: OptigraphError, headers: dict[str, str] | None = None) -> ORJSONResponse:
    """The error's OpenAI-style body with its status, `headers` and the headers the error itself calls for."""
    extra = {**(headers or {}), **(error_headers(request, exc) or {})}
    return ORJSONResponse(exc.body(), status_code=exc.status, headers=extra or None)


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def document_errors(spec: dict[str, Any]) -> None:
    """States in the OpenAPI schema what every operation answers on an error: the OpenAI-style body
    (`ErrorResponse`) under any status not documented otherwise. FastAPI's default 422 is dropped:
    a request that fails validation gets a 400 here."""
    spec.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
    error = {
        "description": "An OpenAI-style error: 400 bad input, 401 no or wrong key, 404 unknown, 409 conflict, "
        "413 body too large, 429 rate limited upstream, 499 client gone, 502 upstream failed, "
        "503 upstream unavailable (`Retry-After`) or server shutting down, 504 upstream timeout",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.get("422", {}).get("description") == "Validation Error":
                del responses["422"]
            responses.setdefault("default", error)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OptigraphError)
    async def optigraph_error(request: Request, exc: OptigraphError) -> ORJSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return ORJSONResponse(
            error_body(
                f"invalid value for {param!r}: {err.get('msg')}",
                "invalid_request_error",
                param=param or None,
                code="invalid_value",
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
        return ORJSONResponse(error_body(str(exc.detail), kind, code=str(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return ORJSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)
