"""A fake OpenAI-compatible upstream over real HTTP, for tests and benchmarks (never shipped).

`make_app(responder, latency=..., n_support=...)` builds a Starlette app; `ServerThread` runs any ASGI
app with uvicorn on a loopback port in a background thread. `reasoning_tokens` adds
`completion_tokens_details.reasoning_tokens` to each response's usage; `chunk_delay` spaces the
streamed chunks out in time; a `ChunkGate` holds each streamed content piece after the first until the
test has received the one before it (proof, without a clock, that a proxy relays pieces as they arrive).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Responder = Callable[[dict[str, Any], int], "str | dict[str, Any] | Exception"]


def echo_responder(body: dict[str, Any], index: int) -> str:
    """Answers with the last user message's text (list content too)."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            return f"echo: {c}"
    return "echo"


@dataclass
class UpstreamLog:
    """What the fake upstream received. With `hold_until` set, single-choice requests are held until
    that many are in flight together (then the gate stays open): proof of concurrency without a clock.
    A gate that never filled lets the requests go after a guard (not a measure) and sets `stalled`."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    hold_until: int = 0
    hold_guard_s: float = 60.0
    opened: bool = False
    stalled: bool = False

    async def hold(self, body: dict[str, Any]) -> None:
        if not self.hold_until or self.opened or int(body.get("n") or 1) > 1:
            return
        deadline = time.monotonic() + self.hold_guard_s
        while self.in_flight < self.hold_until and not self.opened:
            if time.monotonic() > deadline:
                self.stalled = True
                break
            await asyncio.sleep(0.005)
        self.opened = True


class ChunkGate:
    """Lets a streamed content piece go only after the client has received the previous one.

    The test calls `received()` for every piece it gets; the upstream waits for that before sending the
    next piece of the stream. A proxy that held pieces back would leave both sides waiting: after
    `guard_s` (a hang guard, not a measure) the upstream sends anyway and sets `stalled`.
    """

    def __init__(self, guard_s: float = 60.0) -> None:
        self.guard_s = guard_s
        self._lock = threading.Lock()
        self._received = 0
        self.sent = 0  # pieces sent after a wait (every piece but each stream's first)
        self.stalled = False

    def reset(self) -> None:
        with self._lock:
            self._received = self.sent = 0
            self.stalled = False

    def received(self) -> None:
        with self._lock:
            self._received += 1

    async def wait_for_client(self) -> None:
        deadline = time.monotonic() + self.guard_s
        while True:
            with self._lock:
                if self._received > self.sent:
                    self.sent += 1
                    return
            if time.monotonic() > deadline:
                self.stalled = True
                return
            await asyncio.sleep(0.005)


class HTTPFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def make_app(
    responder: Responder = echo_responder,
    *,
    latency: float = 0.0,
    n_support: bool = True,
    log: UpstreamLog | None = None,
    model_ids: tuple[str, ...] = ("fake-model",),
    reasoning_tokens: int = 0,
    chunk_delay: float = 0.0,
    chunk_gate: ChunkGate | None = None,
) -> Starlette:
    log = log if log is not None else UpstreamLog()

    def reply(body: dict[str, Any], i: int) -> dict[str, Any]:
        out = responder(body, i)
        if isinstance(out, Exception):
            raise out
        if isinstance(out, str):
            return {"role": "assistant", "content": out}
        return {"role": "assistant", **out}

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        log.bodies.append(body)
        log.headers.append(dict(request.headers))
        log.in_flight += 1
        log.max_in_flight = max(log.max_in_flight, log.in_flight)
        try:
            await log.hold(body)
            if latency:
                await asyncio.sleep(latency)
            n = int(body.get("n") or 1) if n_support else 1
            try:
                messages = [reply(body, i) for i in range(n)]
            except HTTPFailure as exc:
                return Response(
                    orjson.dumps({"error": {"message": exc.message, "type": "upstream"}}),
                    status_code=exc.status,
                    media_type="application/json",
                )
        finally:
            log.in_flight -= 1
        prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [])
        completion = sum(len((m.get("content") or "").split()) for m in messages)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        choices = [
            {
                "index": i,
                "message": m,
                "finish_reason": "tool_calls" if m.get("tool_calls") else "stop",
                "logprobs": None,
            }
            for i, m in enumerate(messages)
        ]
        if body.get("stream"):
            return StreamingResponse(_sse(body, choices, usage), media_type="text/event-stream")
        return Response(
            orjson.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": choices,
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                }
            ),
            media_type="application/json",
        )

    async def _sse(body: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, Any]):
        async for event in _events(body, choices, usage):
            yield event
            if chunk_delay:
                await asyncio.sleep(chunk_delay)

    async def _events(body: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, Any]):
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        for c in choices:
            m = c["message"]
            yield (
                b"data: "
                + orjson.dumps({**base, "choices": [{"index": c["index"], "delta": {"role": "assistant"}}]})
                + b"\n\n"
            )
            for w, word in enumerate((m.get("content") or "").split(" ")):
                if word and w and chunk_gate is not None:
                    await chunk_gate.wait_for_client()
                if word:
                    piece = word if w == 0 else " " + word
                    yield (
                        b"data: "
                        + orjson.dumps({**base, "choices": [{"index": c["index"], "delta": {"content": piece}}]})
                        + b"\n\n"
                    )
            for k, tc in enumerate(m.get("tool_calls") or []):
                args = tc["function"]["arguments"]
                half = len(args) // 2
                yield (
                    b"data: "
                    + orjson.dumps(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": c["index"],
                                    "delta": {
                                        "tool_calls": [
                                            {
                                                "index": k,
                                                "id": tc["id"],
                                                "type": "function",
                                                "function": {"name": tc["function"]["name"], "arguments": args[:half]},
                                            }
                                        ]
                                    },
                                }
                            ],
                        }
                    )
                    + b"\n\n"
                )
                yield (
                    b"data: "
                    + orjson.dumps(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": c["index"],
                                    "delta": {"tool_calls": [{"index": k, "function": {"arguments": args[half:]}}]},
                                }
                            ],
                        }
                    )
                    + b"\n\n"
                )
            yield (
                b"data: "
                + orjson.dumps(
                    {**base, "choices": [{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}]}
                )
                + b"\n\n"
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def models(_: Request) -> Response:
        return Response(
            orjson.dumps(
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in model_ids],
                }
            ),
            media_type="application/json",
        )

    async def completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        log.bodies.append(body)
        log.headers.append(dict(request.headers))
        text = f"completion of: {body.get('prompt')}"
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body.get("model")}
        usage = {"prompt_tokens": len(str(body.get("prompt")).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            return Response(orjson.dumps({**base, "choices": [choice], "usage": usage}), media_type="application/json")

        async def events():
            for w, word in enumerate(text.split(" ")):
                piece = {"index": 0, "text": word if w == 0 else " " + word, "finish_reason": None, "logprobs": None}
                yield b"data: " + orjson.dumps({**base, "choices": [piece]}) + b"\n\n"
            end = {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
            yield b"data: " + orjson.dumps({**base, "choices": [end]}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        """One vector per input: [characters, words] of each text."""
        body = orjson.loads(await request.body())
        log.bodies.append(body)
        log.headers.append(dict(request.headers))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), float(len(t.split()))]}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(len(t.split()) for t in inputs)
        out = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(out), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )
    app.state.log = log
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("server failed to start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve_process(
    db: Path,
    upstream_url: str,
    *flags: str,
    port: int | None = None,
    log_level: str = "warning",
    command: Callable[..., list[str]] | None = None,
    wait_s: float = 180,  # a hang guard: a loaded machine may take a minute to import everything
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """`optigraph serve` in a child process (this tree, no OPTIGRAPH_* variables from the test run) in
    front of `upstream_url`, on the SQLite file `db`; returned once it answers /health. `command`
    wraps the argument list (e.g. to run the server in a jail); `env` adds environment variables."""
    port = port or free_port()
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")} | extra
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # this tree, not an installed copy
    args = [
        "-m",
        "optigraph",
        "serve",
        "--port",
        str(port),
        "--base-url",
        upstream_url + "/v1",
        "--db-url",
        f"sqlite:///{db}",
        "--log-level",
        log_level,
        *flags,
    ]
    argv = command(*args) if command is not None else [sys.executable, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=db.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:  # a hang guard, not a timing check
            proc.kill()
            raise AssertionError(f"server did not answer /health: {proc.communicate()[0].decode()}")
        time.sleep(0.05)
