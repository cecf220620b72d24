"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from optigraph.api.auth import upstream_key
from optigraph.api.disconnect import unless_client_goes
from optigraph.api.errors import error_response
from optigraph.engine.request import ChatCompletionRequest
from optigraph.engine.runner import ChatResult, Prepared, run_usage
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["chat"])

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
    body = await read_json(request)
    prep = await request.app.state.runner.prepare(body, client_key=key)
    headers = {RUN_HEADER: prep.run_id}
    if prep.stream:
        try:  # wait for the first chunk, so that a failure before it gets its own status
            chunks = await open_stream(request, prep)
        except OptigraphError as exc:
            return error_response(exc, headers)
        # Once streaming, Starlette notices a client that goes and closes `chunks`, which cancels the run.
        return StreamingResponse(chunks, media_type="text/event-stream", headers={**headers, **SSE_HEADERS})
    try:
        result = await run_to_answer(request, prep)
    except OptigraphError as exc:  # the run exists (stored as failed, cancelled or interrupted): say which it was
        headers["x-optigraph-upstream-calls"] = str(run_usage(prep)["calls"])
        return error_response(exc, headers)
    headers["x-optigraph-upstream-calls"] = str(result.response["optigraph"]["upstream_calls"])
    return Response(orjson.dumps(result.response), media_type="application/json", headers=headers)


SSE_HEADERS = {"cache-control": "no-cache"}


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON, or a 400."""
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


def _when_client_goes(request: Request, prep: Prepared) -> Callable[[], None]:
    runner = request.app.state.runner

    def client_went() -> None:  # the run is cancelled with its client, unless it asked to finish anyway
        if not prep.background:
            runner.cancel(prep, "cancelled")

    return client_went


async def open_stream(request: Request, prep: Prepared) -> AsyncIterator[bytes]:
    """The run's SSE chunks, once the first is there: a failure before it raises (its own status)."""
    chunks = request.app.state.runner.stream(prep)
    first = await unless_client_goes(request, anext(chunks), _when_client_goes(request, prep))
    return _prepend(first, chunks)


async def run_to_answer(request: Request, prep: Prepared) -> ChatResult:
    """Runs a non-streamed request to its answer; the run is cancelled if its client goes."""
    runner = request.app.state.runner
    return await unless_client_goes(
        request, runner.start(prep, runner.complete(prep)), _when_client_goes(request, prep)
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def request_schema() -> tuple[dict, dict]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs
