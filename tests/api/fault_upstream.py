"""An OpenAI-compatible upstream that fails on request, spoken over raw HTTP/1.1 so that it can also
drop the connection (an ASGI app cannot). The last user message picks the behaviour:

- `drop ...`: reads the request and closes the connection without a byte of answer;
- `500 ...` / `429 ...`: an OpenAI-style error with that status;
- `hang ...`: sends nothing until the client hangs up (or `release` is set, then answers);
- anything else: a normal answer, `echo: <text>` (streamed when asked).

With `healed` set every request gets the normal answer. Every request is counted in `seen`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class FaultUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    healed: bool = False
    seen: list[str] = field(default_factory=list)
    hung_up: int = 0  # held (`hang`) requests whose client went away
    release: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> FaultUpstream:
        started = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(30), "the fault upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=15)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on the connection
                request = await _read_request(reader)
                if request is None:
                    return
                if not await self._answer(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _answer(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answers one request; False when the connection is to be closed."""
        text = _last_user(request)
        self.seen.append(text)
        mode = "ok" if self.healed else text.split(" ", 1)[0]
        if mode == "drop":
            return False
        if mode in ("500", "429"):
            body = orjson.dumps({"error": {"message": f"scripted {mode}", "type": "server_error"}})
            writer.write(_head(int(mode), "application/json", len(body)) + body)
            await writer.drain()
            return True
        if mode == "hang":
            while not self.release.is_set():
                try:  # a hung-up client makes the read end; nothing is measured here
                    if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                        self.hung_up += 1
                        return False
                except TimeoutError:
                    continue
        answer = f"echo: {text}"
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(answer.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "chatcmpl-fault", "created": int(time.time()), "model": request.get("model")}
        if request.get("stream"):
            chunk = {**base, "object": "chat.completion.chunk"}
            events = [
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": answer}}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": usage},
            ]
            body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            writer.write(_head(200, "text/event-stream", len(body)) + body)
        else:
            message = {"role": "assistant", "content": answer}
            body = orjson.dumps(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
            writer.write(_head(200, "application/json", len(body)) + body)
        await writer.drain()
        return True


def _head(status: int, content_type: str, length: int) -> bytes:
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n").encode()


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The JSON body of the next request on the connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b"{}"
    data = orjson.loads(body)
    return data if isinstance(data, dict) else {}


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content") or "")
    return ""
