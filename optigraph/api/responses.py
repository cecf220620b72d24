"""POST /v1/responses and GET /v1/responses/{id}: OpenAI's Responses API, served by the chat path.

A request is translated into a chat-completions body (api/responses_input.py), prepared and run by
the same Runner as /v1/chat/completions (so approaches are selected the same ways: a model prefix,
`optillm_approach`, an `<optillm_approach>` tag, the server's default), and its answer or stream is
shaped as a response (api/responses_output.py, api/responses_stream.py). The run is the response's
storage: `previous_response_id` and GET read it back from the runs table.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response, StreamingResponse

from optigraph.api.auth import upstream_key
from optigraph.api.chat import RUN_HEADER, SSE_HEADERS, open_stream, read_json, run_to_answer
from optigraph.api.errors import error_response
from optigraph.api.responses_input import ResponsesRequest, chat_body, check_responses_request
from optigraph.api.responses_output import RESPONSES_KEY, conversation_of, from_chat, from_run, run_id_of
from optigraph.api.responses_stream import ResponseEvents
from optigraph.engine.runner import run_usage
from optigraph.errors import InvalidRequest, NotFound, OptigraphError
from optigraph.memory.queries import get_run

router = APIRouter(tags=["responses"])


@router.post(
    "/v1/responses",
    summary="Create a model response (the Responses API) through an approach expression",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponsesRequest"}}},
        }
    },
    responses={200: {"description": "A `response` object, or an SSE stream of Responses events"}},
)
async def create_response(request: Request, key: str | None = Depends(upstream_key)) -> Response:
    body = await read_json(request)
    req = check_responses_request(body, max_tokens=request.app.state.settings.max_tokens_limit)
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        row = await stored_response(request, req.previous_response_id, param="previous_response_id")
        if row["status"] != "completed":
            raise InvalidRequest(
                f"response {req.previous_response_id} is {row['status']}: only a completed response can be continued",
                param="previous_response_id",
                code="previous_response_not_completed",
            )
        history = conversation_of(row)
    chat = chat_body(req, body, history)
    prep = await request.app.state.runner.prepare(chat, client_key=key)
    prep.record.request = {**chat, RESPONSES_KEY: body}  # what GET and previous_response_id read back
    headers = {RUN_HEADER: prep.run_id}
    if prep.stream:
        try:
            chunks = await open_stream(request, prep)
        except OptigraphError as exc:
            return error_response(exc, headers)
        events = ResponseEvents(body, run_id=prep.run_id, model=prep.model)
        return StreamingResponse(
            events.translate(chunks), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
        )
    try:
        result = await run_to_answer(request, prep)
    except OptigraphError as exc:
        headers["x-optigraph-upstream-calls"] = str(run_usage(prep)["calls"])
        return error_response(exc, headers)
    headers["x-optigraph-upstream-calls"] = str(result.response["optigraph"]["upstream_calls"])
    return Response(
        orjson.dumps(from_chat(body, result.response, prep.run_id)), media_type="application/json", headers=headers
    )


ResponseId = Annotated[str, Path(description="The response's id (`resp_...`)")]


@router.get(
    "/v1/responses/{response_id}",
    summary="A stored response",
    dependencies=[Depends(upstream_key)],
    responses={200: {"description": "The `response` object, as it stands"}},
)
async def get_response(request: Request, response_id: ResponseId) -> Response:
    row = await stored_response(request, response_id, param="response_id")
    return Response(orjson.dumps(from_run(row)), media_type="application/json")


async def stored_response(request: Request, response_id: str, *, param: str) -> dict[str, Any]:
    """The run behind a stored response, or a 404: an unknown id, a run that was not a response, or a
    response created with `store: false`."""
    run_id = run_id_of(response_id)
    row = None
    if run_id is not None:
        row = await get_run(request.app.state.db, run_id)
        if row is None or row["status"] == "running":  # its end may still be on its way to the database
            await request.app.state.recorder.flush()
            row = await get_run(request.app.state.db, run_id)
    responses = ((row or {}).get("request") or {}).get(RESPONSES_KEY)
    if row is None or not isinstance(responses, dict) or responses.get("store") is False:
        raise NotFound(f"no response with id {response_id!r}", param=param, code="response_not_found")
    return row


def request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})
