"""A lean HTTP/1.1 client for the upstream's non-streamed JSON calls: one origin, a pool of keep-alive
connections, the request written as one buffer and the answer parsed by httptools (C; the parser
uvicorn already uses for the server side).

aiohttp's client spends about 480 k instructions on one small POST (bench/instructions.py), more than
the rest of a minimal proxy together: a header multidict and a response object per message, cookie
and redirect handling, tracing hooks, a timer per read. A JSON API call uses none of it; this client
costs about a third (docs/performance.md). What it leaves to aiohttp (openai_http.py): streamed
answers, calls through a proxy, and the model list.

Errors: `ConnectTimeout` when no connection opens within the connect timeout, `TimeoutError` when the
whole attempt (waiting for a free connection included) runs over, `HTTPConnectionError` when the
connection fails, closes before the answer is complete, or the answer is not HTTP. A request is sent
once: a connection that closes after the request left may have delivered it (a POST to a model is
not safe to repeat), so that is an error for the caller's retry policy, as with aiohttp. Pooled
connections are dropped after `idle_s` idle, before a server's own keep-alive timeout, so that a
server rarely closes one just as a request leaves on it.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

DEFAULT_PORTS = {"http": 80, "https": 443}


class HTTPConnectionError(Exception):
    """The connection failed, closed before the answer was complete, or the answer was not HTTP."""


class ConnectTimeout(TimeoutError):
    """No connection opened within the connect timeout."""


class _Closed(HTTPConnectionError):
    """The connection was found closed before the request was written: another one may take it."""


def tls_context(setting: bool | ssl.SSLContext) -> ssl.SSLContext:
    """The TLS context for aiohttp's `ssl` setting: the default checks (True), none (False), or a context."""
    if isinstance(setting, ssl.SSLContext):
        return setting
    context = ssl.create_default_context()
    if not setting:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `answer` is the future of the response in flight: (status, body)."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.encoding: bytes | None = None
        self.framed = False  # the answer's length is known (content-length or chunked), not "until close"
        self.headers_done = False
        self.status = 0
        self.keep_alive = False  # read when the headers are complete (the parser forgets after the message)
        self.received = False  # a byte of the current answer arrived
        self.closed = False
        self.idle_since = 0.0
        self.deadline: float | None = None  # of the request in flight (loop time), enforced by the pool's sweep

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():  # bytes nobody asked for: the stream is out of step
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPConnectionError(f"the answer is not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.framed:  # an answer delimited by the end of the connection
            self._finish()
        elif not self.received:
            self._fail(HTTPConnectionError("the server closed the connection before answering"))
        else:
            self._fail(HTTPConnectionError("the server closed the connection before the answer was complete"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-encoding":
            self.encoding = value.strip().lower()
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._finish()

    # the pool's side
    def send(self, data: bytes, deadline: float | None) -> asyncio.Future[tuple[int, bytes]]:
        self.body, self.encoding, self.framed, self.headers_done, self.received = [], None, False, False, False
        self.deadline = deadline
        self.keep_alive = False
        answer = self.answer = self.pool.loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            answer.set_exception(_Closed("the connection closed while idle"))
        else:
            self.transport.write(data)
        return answer

    def reusable(self) -> bool:
        return not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        answer = self.answer
        if answer is None or answer.done():
            return
        body = b"".join(self.body)
        if self.encoding in (b"gzip", b"deflate", b"x-gzip"):
            try:  # we ask for none, but a server may compress anyway
                body = zlib.decompress(body, zlib.MAX_WBITS | 32)  # gzip or zlib, by the header
            except zlib.error as exc:
                answer.set_exception(
                    HTTPConnectionError(f"the answer's {self.encoding.decode()} body is corrupt: {exc}")
                )
                return
        elif self.encoding not in (None, b"identity"):
            answer.set_exception(
                HTTPConnectionError(f"the answer's content-encoding {self.encoding.decode()} is not supported")
            )
            return
        answer.set_result((self.status, body))

    def _fail(self, exc: Exception) -> None:
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)


class _Slots:
    """At most `size` holders at once, the others waiting in turn: what `asyncio.Semaphore` does, without
    the bookkeeping it repeats on every acquire (a generator over its waiters), which showed in the
    passthrough profile. `release` hands the slot straight to the first waiter still waiting."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Http1Pool:
    """Keep-alive connections to the origin of `base_url`, used for POSTs of JSON bodies.

    At most `max_connections` requests are in flight at once (more wait, within their timeout); an
    idle connection older than `idle_s` is closed rather than reused, before a server's own keep-alive
    timeout (uvicorn's is 5 s) can race with a new request. Bound to the event loop it is first used on.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tls: bool | ssl.SSLContext = True,
        connect_timeout_s: float = 10.0,
        max_connections: int = 512,
        idle_s: float = 4.0,
        user_agent: str = "optigraph",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.prefix = parts.path.rstrip("/")
        self.tls = tls_context(tls) if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if parts.port is None or parts.port == DEFAULT_PORTS[parts.scheme] else f"{host}:{parts.port}"
        self._fixed = f"Host: {authority}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n"
        self._heads: dict[str, str] = {}
        self._idle: list[_Connection] = []
        self.closed = False  # close() was called: connections are closed as their requests end
        self._slots = _Slots(max_connections)
        self._sending: set[_Connection] = set()  # connections with a request in flight
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_interval = 0.0  # of the armed sweep...
        self._swept_for = 0.0  # ...and the timeout it serves
        self.loop = asyncio.get_running_loop()

    async def post(
        self, path: str, body: bytes, headers: dict[str, str], *, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """POSTs `body` to `path` (after the base URL's own path): the answer's status and body.
        Header names and values must not hold line breaks (the caller checks values it did not write).

        With `timeout_s`, TimeoutError when the whole attempt (a free slot, a connection, the answer) takes
        longer. The answer's deadline is kept by a sweep over the requests in flight, a timer per pool
        rather than one per request; it fires up to a twentieth of the shortest `timeout_s` in flight (at
        most a second) late."""
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._fixed}"
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = f"{head}{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
        deadline = None if timeout_s is None else self.loop.time() + timeout_s
        slots = self._slots
        if slots.free > 0 and not slots.waiters:
            slots.free -= 1  # the common case, without a coroutine
        else:
            await self._within(deadline, slots.acquire(self.loop))
        try:
            while True:
                idle = self._idle_connection()
                connection = idle if idle is not None else await self._within(deadline, self._connect())
                self._sending.add(connection)
                if timeout_s is not None and (self._sweep is None or timeout_s < self._swept_for):
                    self._sweep_for(timeout_s)
                try:
                    answer = await connection.send(data, deadline)
                except _Closed:  # nothing was written: take another connection
                    continue
                except BaseException:  # a timeout, a cancel or a failure mid-answer: the connection's state is unknown
                    connection.close()
                    raise
                finally:
                    self._sending.discard(connection)
                self._release(connection)
                return answer
        finally:
            slots.release()

    async def _within(self, deadline: float | None, step: Any) -> Any:
        """Awaits `step` (a coroutine), TimeoutError past `deadline`."""
        if deadline is None:
            return await step
        async with asyncio.timeout_at(deadline):
            return await step

    def _sweep_for(self, timeout_s: float) -> None:
        """Sweeps every twentieth of `timeout_s` (at most every second) while requests are in flight; a
        shorter timeout than the armed sweep's re-arms it."""
        if self._sweep is not None:
            self._sweep.cancel()
        self._swept_for = timeout_s
        self._sweep_in(max(0.01, min(1.0, timeout_s / 20)))

    def _sweep_in(self, interval: float) -> None:
        self._sweep_interval = interval
        self._sweep = self.loop.call_later(interval, self._expire, interval)

    def _expire(self, interval: float) -> None:
        """Fails the answers in flight past their deadline; sweeps again while any request is in flight."""
        self._sweep = None
        now = self.loop.time()
        for connection in self._sending:
            if connection.deadline is not None and connection.deadline <= now:
                connection._fail(TimeoutError())
        if self._sending:
            self._sweep_in(interval)

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection that may still be used."""
        now = self.loop.time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.idle_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        """A new connection."""
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout_s:g} s") from None
        except OSError as exc:  # refused, unreachable, name not found, TLS failures (ssl.SSLError is an OSError)
            raise HTTPConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable() and not self.closed:
            connection.idle_since = self.loop.time()
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Closes the idle connections; those in flight close when their request ends."""
        self.closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        if self._sweep is not None and not self._sending:
            self._sweep.cancel()
            self._sweep = None
