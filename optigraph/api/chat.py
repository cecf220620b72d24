"""POST /v1/chat/completions.

The route is declared on the FastAPI router (its OpenAPI entry, and a fallback), but requests reach
`ChatEndpoint` first: a pure ASGI middleware, innermost of the app's middlewares (so the body limit,
the access log and whatever an operator adds still wrap it), that serves the route directly. It
answers exactly as the route would, without the router's matching, dependency solving and exception
middleware: on a passthrough request that machinery cost more CPU than the proxying itself
(docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from optigraph.api.auth import upstream_key
from optigraph.api.disconnect import unless_client_goes
from optigraph.api.errors import ORJSONResponse, error_body
from optigraph.engine.request import ChatCompletionRequest
from optigraph.engine.runner import run_usage
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["chat"])

log = logging.getLogger("optigraph.api")

PATH = "/v1/chat/completions"
RUN_HEADER = "x-optigraph-run-id"


@router.post(
    "/v1/chat/completions",
    summary="Chat completion through an approach expression",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
        }
    },
    responses={200: {"description": "An OpenAI chat.completion, or an SSE stream of chat.completion.chunk"}},
)
async def chat_completions(request: Request, key: str | None = Depends(upstream_key)) -> Response:
    return await _answer(request, key)


async def _answer(request: Request, key: str | None) -> Response:
    """The route's work, once the client's key is checked."""
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    runner = request.app.state.runner
    prep = await runner.prepare(body, client_key=key)
    headers = {RUN_HEADER: prep.run_id}

    def client_went() -> None:  # the run is cancelled with its client, unless it asked to finish anyway
        if not prep.background:
            runner.cancel(prep, "cancelled")

    if prep.stream:
        chunks = runner.stream(prep)
        try:  # wait for the first chunk, so that a failure before it gets its own status
            first = await unless_client_goes(request, anext(chunks), client_went)
        except OptigraphError as exc:
            return ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)
        # Once streaming, Starlette notices a client that goes and closes `chunks`, which cancels the run.
        return StreamingResponse(
            _prepend(first, chunks), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )
    try:
        result = await unless_client_goes(request, runner.start(prep, runner.complete(prep)), client_went)
    except OptigraphError as exc:  # the run exists (stored as failed, cancelled or interrupted): say which it was
        headers["x-optigraph-upstream-calls"] = str(run_usage(prep)["calls"])
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)
    headers["x-optigraph-upstream-calls"] = str(result.response["optigraph"]["upstream_calls"])
    return Response(orjson.dumps(result.response), media_type="application/json", headers=headers)


class ChatEndpoint:
    """Serves POST /v1/chat/completions (see the module docstring); every other request goes on to `app`.

    Errors are answered as the app's exception handlers answer them (api/errors.py): an
    OptigraphError with its status (401 with `www-authenticate`), anything else logged and a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await _answer(request, await upstream_key(request))
        except OptigraphError as exc:
            headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
            response = ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)
        except Exception as exc:
            log.exception("unexpected error", exc_info=exc)
            response = ORJSONResponse(
                error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
            )
        await response(scope, receive, send)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def request_schema() -> tuple[dict, dict]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs
