"""POST /v1/completions (the legacy prompt API) and POST /v1/embeddings: passed through.

No approach applies to them and they are not stored as runs: with an OpenAI-compatible upstream the
body goes to the upstream's own route as it is (streamed completions relayed chunk by chunk), and its
answer or error comes back. On the local backend a completion samples the local model from the raw
prompt (no chat template); embeddings are a 400 there (`unsupported_endpoint`), as they are through
the LiteLLM backend: the local chat models are not embedding models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from optigraph.api.access import Caller, caller
from optigraph.api.chat import SSE_HEADERS, read_json
from optigraph.api.errors import error_response
from optigraph.api.scopes import CHAT, require
from optigraph.backends.openai_http import OpenAIHTTPBackend
from optigraph.errors import InvalidRequest, OptigraphError

router = APIRouter(tags=["completions"])


def _checked(body: Any, field: str, request: Request) -> dict[str, Any]:
    """The body, or a 400 for what must not go upstream (no model, no `field`, over the server's limits)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("missing required parameter: 'model'", param="model", code="missing_required_parameter")
    if body.get(field) in (None, "", []):
        raise InvalidRequest(f"missing required parameter: {field!r}", param=field, code="missing_required_parameter")
    settings = request.app.state.settings
    for name, limit in (("n", settings.max_n), ("max_tokens", settings.max_tokens_limit)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit):
            raise InvalidRequest(f"{name} must be an integer between 1 and {limit}", param=name, code="invalid_value")
    return body


def _unsupported(route: str, backend: Any) -> InvalidRequest:
    return InvalidRequest(
        f"{route} is not supported on the {backend.name} backend: it needs an OpenAI-compatible upstream (--base-url)",
        param="model",
        code="unsupported_endpoint",
    )


@router.post(
    "/v1/completions",
    summary="Legacy text completion, passed through to the upstream (or the local model)",
    responses={200: {"description": "A text_completion, or an SSE stream of them"}},
)
async def completions(request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    require(who.principal.scopes, CHAT, "a completion")
    key = who.forward_key
    body = _checked(await read_json(request), "prompt", request)
    backend, model = request.app.state.backends.for_model(body["model"])
    body = {**body, "model": model}
    stream = bool(body.get("stream"))
    if isinstance(backend, OpenAIHTTPBackend):
        if stream:
            return await _relay(request, backend.stream_json("/completions", body, api_key=key))
        return _json(await backend.post_json("/completions", body, api_key=key))
    if backend.name == "local":
        if stream:
            return await _relay(request, backend.stream_text(body))
        return _json(await backend.complete_text(body))
    raise _unsupported("/v1/completions", backend)


@router.post(
    "/v1/embeddings",
    summary="Embeddings, passed through to the upstream",
    responses={200: {"description": "The upstream's embedding list"}},
)
async def embeddings(request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    require(who.principal.scopes, CHAT, "embeddings")
    key = who.forward_key
    body = _checked(await read_json(request), "input", request)
    backend, model = request.app.state.backends.for_model(body["model"])
    if not isinstance(backend, OpenAIHTTPBackend):
        raise _unsupported("/v1/embeddings", backend)
    return _json(await backend.post_json("/embeddings", {**body, "model": model}, api_key=key))


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def _relay(request: Request, events: AsyncIterator[Any]) -> Response:
    """An SSE response of `events`, once the first is there (a failure before it keeps its status)."""
    try:
        first = await anext(events)
    except OptigraphError as exc:
        return error_response(request, exc)
    except StopAsyncIteration:
        first = None
    return StreamingResponse(_sse(first, events), media_type="text/event-stream", headers=SSE_HEADERS)


async def _sse(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield b"data: " + orjson.dumps(first) + b"\n\n"
            async for event in rest:
                yield b"data: " + orjson.dumps(event) + b"\n\n"
    except OptigraphError as exc:  # after the first chunk, an error is an event of the stream
        yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield b"data: [DONE]\n\n"
