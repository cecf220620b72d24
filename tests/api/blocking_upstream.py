"""An OpenAI-compatible upstream over real HTTP whose answers can be held back: a call for a gated
prompt waits until the test releases it, and notes whether its client hung up meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Gate:
    """Calls whose last user message is `prompt` wait for `release` (threading events: the upstream
    runs in its own thread)."""

    prompt: str
    mid_stream: bool = False  # a streamed answer is held after its first piece, not before it
    received: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hung_up: threading.Event = field(default_factory=threading.Event)  # a held call's client went away
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def make_gated_app(gate: Gate) -> Starlette:
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        gate.bodies.append(body)
        text = _last_user(body)
        if text == gate.prompt and gate.mid_stream and body.get("stream"):
            gate.received.set()
            return StreamingResponse(_held_sse(body), media_type="text/event-stream")
        if text == gate.prompt:
            gate.received.set()
            while not gate.release.is_set():
                if await request.is_disconnected():
                    gate.hung_up.set()
                    return Response(status_code=499)
                await asyncio.sleep(0.01)  # polling the two events; nothing here measures time
        answer = f"echo: {text}"
        usage = {
            "prompt_tokens": len(text.split()),
            "completion_tokens": len(answer.split()),
            "total_tokens": len(text.split()) + len(answer.split()),
        }
        base = {"id": "chatcmpl-gated", "created": int(time.time()), "model": body.get("model")}
        if body.get("stream"):
            return StreamingResponse(_sse(base, answer, usage, body), media_type="text/event-stream")
        return Response(
            orjson.dumps(
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                    ],
                }
            ),
            media_type="application/json",
        )

    async def _sse(
        base: dict[str, Any], answer: str, usage: dict[str, Any], body: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        chunk = {**base, "object": "chat.completion.chunk"}
        for delta, finish in (({"role": "assistant"}, None), ({"content": answer}, None), ({}, "stop")):
            yield (
                b"data: "
                + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                + b"\n\n"
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            yield b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _held_sse(body: dict[str, Any]) -> AsyncIterator[bytes]:
        chunk = {
            "id": "chatcmpl-gated",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        yield (
            b"data: "
            + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "first"}}]})
            + b"\n\n"
        )
        try:
            while not gate.release.is_set():
                await asyncio.sleep(0.01)
        finally:
            if not gate.release.is_set():
                gate.hung_up.set()  # the response was abandoned while held
        yield (
            b"data: "
            + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": " rest"}, "finish_reason": "stop"}]})
            + b"\n\n"
        )
        yield b"data: [DONE]\n\n"

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
