"""The request body size limit: a pure ASGI middleware, so it holds for every route and for bodies
sent without a Content-Length (chunked)."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from optigraph.errors import RequestTooLarge


class BodyLimit:
    """Answers 413 (`request_too_large`, OpenAI-style) to a request whose body exceeds `max_bytes`.

    A declared Content-Length over the limit is refused before any byte of the body is read; one
    within it passes straight through (the HTTP server delivers no more bytes than it declares). A
    body without one (chunked) is read here, counting, up to the limit, and handed to the app whole:
    every route reads its body whole anyway, so this costs no memory beyond the limit, and no route
    sees a body it would have to stop reading halfway."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app sees that itself
                replay: list[Message] = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send) -> None:
        error = RequestTooLarge(
            f"the request body is larger than this server's limit of {self.max_bytes} bytes (max_body_bytes)"
        )
        body = orjson.dumps(error.body())
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when there is none to trust (absent, malformed, or beside a
    Transfer-Encoding, which takes precedence over it)."""
    length: int | None = None
    for name, value in scope.get("headers") or ():
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length
