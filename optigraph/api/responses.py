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

from optigraph.api.access import Caller, caller
from optigraph.api.chat import RUN_HEADER, SSE_HEADERS, open_stream, prepare_for, read_json, run_to_answer
from optigraph.api.errors import error_response
from optigraph.api.responses_input import ResponsesRequest, chat_body, check_responses_request
from optigraph.api.responses_output import RESPONSES_KEY, conversation_of, from_chat, from_run, run_id_of
from optigraph.api.responses_stream import ResponseEvents
from optigraph.api.scopes import RUNS_READ, require
from optigraph.engine.runner import Prepared, run_usage
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
async def create_response(request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    body = await read_json(request)
    req = check_responses_request(body, max_tokens=request.app.state.settings.max_tokens_limit)
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        row = await stored_response(request, req.previous_response_id, param="previous_response_id", who=who)
        if row["status"] != "completed":
            raise InvalidRequest(
                f"response {req.previous_response_id} is {row['status']}: only a completed response can be continued",
                param="previous_response_id",
                code="previous_response_not_completed",
            )
        history = conversation_of(row)
    chat = chat_body(req, body, history)
    prep = await prepare_for(request, who, chat, "a response")
    prep.record.request = {**prep.record.request, RESPONSES_KEY: _stored_request(body, prep)}
    headers = {RUN_HEADER: prep.run_id}
    admission = await request.app.state.run_slots.admit(who.principal)
    if prep.stream:
        try:
            chunks = await open_stream(request, prep, admission)
        except BaseException as exc:
            await admission.release()
            if not isinstance(exc, OptigraphError):
                raise
            return error_response(request, exc, headers)
        events = ResponseEvents(body, run_id=prep.run_id, model=prep.model)
        return StreamingResponse(
            events.translate(chunks), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
        )
    try:
        result = await run_to_answer(request, prep)
    except OptigraphError as exc:
        headers["x-optigraph-upstream-calls"] = str(run_usage(prep)["calls"])
        return error_response(request, exc, headers)
    finally:
        await admission.release()
    headers["x-optigraph-upstream-calls"] = str(result.response["optigraph"]["upstream_calls"])
    return Response(
        orjson.dumps(from_chat(body, result.response, prep.run_id)), media_type="application/json", headers=headers
    )


ResponseId = Annotated[str, Path(description="The response's id (`resp_...`)")]


@router.get(
    "/v1/responses/{response_id}",
    summary="A stored response",
    responses={200: {"description": "The `response` object, as it stands"}},
)
async def get_response(request: Request, response_id: ResponseId, who: Annotated[Caller, Depends(caller)]) -> Response:
    require(who.principal.scopes, RUNS_READ, "reading a response")
    row = await stored_response(request, response_id, param="response_id", who=who)
    return Response(orjson.dumps(from_run(row)), media_type="application/json")


async def stored_response(request: Request, response_id: str, *, param: str, who: Caller) -> dict[str, Any]:
    """The caller's tenant's run behind a stored response, or a 404: an unknown id, another tenant's
    response, a run that was not a response, or a response created with `store: false`."""
    run_id = run_id_of(response_id)
    tenant = who.principal.tenant
    row = None
    if run_id is not None:
        row = await get_run(request.app.state.db, run_id, tenant=tenant)
        if row is None or row["status"] == "running":  # its end may still be on its way to the database
            await request.app.state.recorder.flush()
            row = await get_run(request.app.state.db, run_id, tenant=tenant)
    responses = ((row or {}).get("request") or {}).get(RESPONSES_KEY)
    if row is None or not isinstance(responses, dict) or responses.get("store") is False:
        raise NotFound(f"no response with id {response_id!r}", param=param, code="response_not_found")
    return row


def request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


def _stored_request(body: dict[str, Any], prep: Prepared) -> dict[str, Any]:
    """The Responses request as the run keeps it (what GET and previous_response_id read back). When a
    plugin at the run's edge rewrote the chat body before it was stored (privacy), none of the client's
    own text is kept: the instructions are the rewritten system message, the input is left out."""
    if prep.edge is None:
        return body
    kept = {k: v for k, v in body.items() if k not in ("input", "instructions", "user", "metadata")}
    messages = prep.record.request.get("messages") or []
    if body.get("instructions") and messages and messages[0].get("role") == "system":
        kept["instructions"] = messages[0].get("content")
    return kept
