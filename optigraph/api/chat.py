"""POST /v1/chat/completions.

The route is declared on the FastAPI router (its OpenAPI entry, and a fallback), but requests reach
`ChatEndpoint` first: a pure ASGI middleware, innermost of the app's middlewares (so the body limit,
the access log and whatever an operator adds still wrap it), that serves the route directly. It
answers exactly as the route would, without the router's matching, dependency solving and exception
middleware: on a passthrough request that machinery cost more CPU than the proxying itself
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from optigraph.api.access import Caller, caller
from optigraph.api.access_log import note_run
from optigraph.api.admission import Admission
from optigraph.api.disconnect import client_gone, unless_client_goes
from optigraph.api.errors import ORJSONResponse, error_body, error_response
from optigraph.api.scopes import CHAT, require, require_approaches
from optigraph.engine.request import ChatCompletionRequest
from optigraph.engine.runner import ChatResult, Prepared, run_usage
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["chat"])

log = logging.getLogger("optigraph.api")

PATH = "/v1/chat/completions"

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
async def chat_completions(request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    return await _answer(request, who, await read_json(request))


async def _answer(request: Request, who: Caller, body: Any) -> Response:
    """The route's work, once the caller is known and the body read."""
    prep = await prepare_for(request, who, body, "a chat completion")
    admission = await request.app.state.run_slots.admit(who.principal)
    try:
        return await _run(request, prep, admission)
    except BaseException:
        await admission.release()
        raise


async def prepare_for(request: Request, who: Caller, body: dict[str, Any], what: str) -> Prepared:
    """The run of `body` for this caller: its tenant's, after the scopes it needs are checked."""
    principal = who.principal
    require(principal.scopes, CHAT, what)
    runner = request.app.state.runner
    # The request's headers only when there is a trace to continue (building them costs a raised and caught
    # AttributeError, among others, on every request).
    traced = runner.telemetry.tracing is not None
    prep = await runner.prepare(
        body, client_key=who.forward_key, tenant=principal.tenant, trace_headers=request.headers if traced else None
    )
    note_run(request.scope, prep)
    require_approaches(principal.scopes, runner.registry, ("none",) if prep.compiled is None else prep.compiled.names)
    return prep


async def _run(request: Request, prep: Prepared, admission: Admission) -> Response:
    """Runs the admitted request; its slot is freed when the answer (or the stream) ends."""
    headers = {RUN_HEADER: prep.run_id}
    if prep.trace_id is not None:
        headers[TRACE_HEADER] = prep.trace_id
    if prep.stream:
        try:  # wait for the first chunk, so that a failure before it gets its own status
            chunks = await open_stream(request, prep, admission)
        except OptigraphError as exc:
            await admission.release()
            return error_response(request, exc, headers)
        # Once streaming, Starlette notices a client that goes and closes `chunks`, which cancels the run.
        return StreamingResponse(chunks, media_type="text/event-stream", headers={**headers, **SSE_HEADERS})
    try:
        result = await run_to_answer(request, prep)
    except OptigraphError as exc:  # the run exists (stored as failed, cancelled or interrupted): say which it was
        headers["x-optigraph-upstream-calls"] = str(run_usage(prep)["calls"])
        return error_response(request, exc, headers)
    finally:
        await admission.release()
    headers["x-optigraph-upstream-calls"] = str(result.response["optigraph"]["upstream_calls"])
    return JSONAnswer(orjson.dumps(result.response), headers)


class JSONAnswer(Response):
    """A 200 with a JSON body already encoded and a few plain header values: the raw headers are built
    directly, without the general Response's per-header normalisation (a passthrough request's CPU)."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]


class ChatEndpoint:
    """Serves POST /v1/chat/completions (see the module docstring); every other request goes on to `app`.

    Errors are answered as the app's exception handlers answer them (api/errors.py): an
    OptigraphError with its status and headers (`www-authenticate` on a 401), anything else logged and a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            who = await caller(request)
            response = await _answer(request, who, parse_json(await read_body(receive)))
        except OptigraphError as exc:
            response = error_response(request, exc)
        except Exception as exc:
            log.exception("unexpected error", exc_info=exc)
            response = ORJSONResponse(
                error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
            )
        await response(scope, receive, send)


class ChatFirst:
    """The app's outermost layer: POST /v1/chat/completions goes to `chat`, the app's own middlewares
    (the access log, the body limit, whatever an operator added, the same instances) around
    `ChatEndpoint`; every other request to `rest`, the whole stack. The chat route so skips the
    framework's layers that it does not need (its server-error, telemetry and body-size wrappers:
    `ChatEndpoint` answers its own errors, `BodyLimit` bounds the body), each of which is passed
    through on every step of the request (docs/performance.md)."""

    def __init__(self, chat: ASGIApp, rest: ASGIApp) -> None:
        self.chat = chat
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await self.chat(scope, receive, send)
        else:
            await self.rest(scope, receive, send)


SSE_HEADERS = {"cache-control": "no-cache"}


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON, or a 400."""
    return parse_json(await request.body())


async def read_body(receive: Receive) -> bytes:
    """The whole request body from the ASGI messages (as Starlette's `Request.body` reads it, without
    its stream generator: a passthrough request's CPU); ClientDisconnect if the client goes first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """`raw` parsed as JSON, or a 400."""
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


async def open_stream(request: Request, prep: Prepared, admission: Admission | None = None) -> AsyncIterator[bytes]:
    """The run's SSE chunks, once the first is there: a failure before it raises (its own status).
    The admission's run slot is freed when the stream ends."""
    chunks = request.app.state.runner.stream(prep)
    first = await unless_client_goes(request, anext(chunks), _when_client_goes(request, prep))
    return _prepend(first, chunks, admission)


WATCH_AFTER_S = 0.05  # a non-streamed run watches for its client going once it has run this long


async def run_to_answer(request: Request, prep: Prepared) -> ChatResult:
    """Runs a non-streamed request to its answer, in this task; the run is cancelled if its client goes.

    No task of its own: `Runner.complete` makes this task the run's while it runs, so `cancel` (the
    client went) and `interrupt_all` (shutdown) reach it there and it turns that into RunCancelled or
    RunInterrupted. A task per run, and the step through the event loop to await it, cost about 47 k
    instructions per passthrough request (docs/performance.md). The task that watches for the client
    going starts only once the run has taken `WATCH_AFTER_S`: a run that ends sooner (a passthrough to
    a fast upstream) pays for a timer instead, and a client gone before then is noticed then."""
    runner = request.app.state.runner
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_cancel_when_gone(request, prep))

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await runner.complete(prep)
    except OptigraphError:
        task = asyncio.current_task()
        if prep.stop_reason is not None and task is not None and task.cancelling():
            task.uncancel()  # the run's cancellation reached this task and became the error above
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _cancel_when_gone(request: Request, prep: Prepared) -> None:
    """Cancels the run of `prep` when its client goes (unless it asked to finish anyway). Once the run
    has ended there is nothing to cancel: `Runner.cancel` finds no task running it."""
    await client_gone(request)
    _when_client_goes(request, prep)()


async def _prepend(
    first: bytes, rest: AsyncIterator[bytes], admission: Admission | None = None
) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        try:
            await rest.aclose()  # type: ignore[attr-defined]
        finally:
            if admission is not None:
                await admission.release()


def request_schema() -> tuple[dict, dict]:
    """The request schema and its definitions, for the OpenAPI document."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs
