"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from optigraph.api.auth import upstream_key
from optigraph.api.errors import ORJSONResponse
from optigraph.engine.request import ChatCompletionRequest
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["chat"])

RUN_HEADER = "x-optigraph-run-id"


@router.post(
    "/v1/chat/completions",
    summary="Chat completion through an approach expression",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}},
    responses={200: {"description": "An OpenAI chat.completion, or an SSE stream of chat.completion.chunk"}},
)
async def chat_completions(request: Request, key: str | None = Depends(upstream_key)) -> Response:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    runner = request.app.state.runner
    prep = await runner.prepare(body, client_key=key)
    headers = {RUN_HEADER: prep.run_id}
    if prep.stream:
        chunks = runner.stream(prep)
        try:  # wait for the first chunk, so that a failure before it gets its own status
            first = await anext(chunks)
        except OptigraphError as exc:
            return ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)
        return StreamingResponse(_prepend(first, chunks), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
    try:
        result = await runner.complete(prep)
    except OptigraphError as exc:  # the run exists (stored as failed): say which it was
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
