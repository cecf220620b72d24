"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from optigraph.api.access_log import note_run
from optigraph.api.auth import upstream_key
from optigraph.api.disconnect import unless_client_goes
from optigraph.api.errors import ORJSONResponse
from optigraph.engine.request import ChatCompletionRequest
from optigraph.engine.runner import run_usage
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["chat"])

RUN_HEADER = "x-optigraph-run-id"
TRACE_HEADER = "x-optigraph-trace-id"  # with tracing on: the run's trace (streamed answers carry no body id)


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
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    runner = request.app.state.runner
    prep = await runner.prepare(body, client_key=key, trace_headers=request.headers)
    note_run(request.scope, prep)
    headers = {RUN_HEADER: prep.run_id}
    if prep.trace_id is not None:
        headers[TRACE_HEADER] = prep.trace_id

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


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def request_schema() -> tuple[dict, dict]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs
