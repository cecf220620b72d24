"""The chat route is served before the framework's own middlewares (api/chat.py ChatFirst), yet
through the app's: a middleware an operator adds wraps the chat route and every other route alike
(one instance for both), and the access log and body limit still hold for it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import start_stack
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from optigraph.api.app import create_app
from optigraph.config import Settings

HELLO = [{"role": "user", "content": "hello there"}]


class Tagging:
    """An operator's middleware: counts what it sees and tags every response."""

    instances: list[Tagging] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str] = []
        Tagging.instances.append(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(f"{scope['method']} {scope['path']}")

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-operator", b"seen")]
            await send(message)

        await self.app(scope, receive, tagged)


def test_an_operators_middleware_wraps_the_chat_route_and_the_others(tmp_path: Path) -> None:
    Tagging.instances.clear()
    with start_stack(tmp_path / "o.db", max_body_bytes=4096) as stack:
        app = stack.server.server.config.app
        app.user_middleware.insert(0, Middleware(Tagging))  # as app.add_middleware(Tagging) before the start
        app.middleware_stack = None  # rebuilt on the next request, with it
        with stack.http() as http:
            ok = http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO})
            bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
            huge = http.post("/v1/chat/completions", content=b"x" * 5000, headers={"content-type": "application/json"})
            health = http.get("/health")
            metrics = http.get("/metrics").text
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"  # the body limit
    assert health.status_code == 200
    assert all(r.headers.get("x-operator") == "seen" for r in (ok, bad, huge, health))
    (tagging,) = Tagging.instances  # one instance serves both ways in
    assert tagging.seen[:4] == ["POST /v1/chat/completions"] * 3 + ["GET /health"]
    # the access log counted the chat route's responses too
    assert 'optigraph_http_responses_total{code="200"}' in metrics
    assert 'optigraph_http_responses_total{code="400"}' in metrics and 'code="413"' in metrics


def test_the_stack_ends_at_the_route_it_serves(tmp_path: Path) -> None:
    """Requests that are not a POST to the chat route go through the whole stack (a GET of it is a 405 by
    the router, not the chat endpoint's answer)."""
    app = create_app(Settings(base_url="http://127.0.0.1:9/v1", db_url=f"sqlite:///{tmp_path}/o.db"))
    stack = app.build_middleware_stack()
    assert type(stack).__name__ == "ChatFirst"
    transport = httpx.ASGITransport(app=app)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/v1/chat/completions")

    assert asyncio.run(get()).status_code == 405


async def test_the_chat_body_is_read_whole_from_several_messages_and_a_gone_client_is_said() -> None:
    from starlette.requests import ClientDisconnect

    from optigraph.api.chat import parse_json, read_body

    def feeding(*messages: dict[str, Any]) -> Any:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        return receive

    parts = feeding(
        {"type": "http.request", "body": b'{"model": "x", ', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b'"messages": []}', "more_body": False},
    )
    assert parse_json(await read_body(parts)) == {"model": "x", "messages": []}
    assert await read_body(feeding({"type": "http.request"})) == b""  # no body at all
    gone = feeding({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):  # the client went before its body ended
        await read_body(gone)
