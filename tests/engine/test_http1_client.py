"""The lean HTTP/1.1 client (backends/http1.py) against a raw asyncio server on loopback, which
answers each request the way its path says: keep-alive reuse, an idle connection the server closed
(never sent twice), a connection cut mid-answer, answers framed
by length, by chunks and by the end of the connection, compressed answers, garbage, the connection
limit, and the backend's use of it (errors as UpstreamErrors, a key with a line break refused)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from optigraph.backends.http1 import ConnectTimeout, Http1Pool, HTTPConnectionError
from optigraph.backends.openai_http import OpenAIHTTPBackend
from optigraph.errors import InvalidRequest, UpstreamError, UpstreamTimeout

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    path = line.split()[1].decode()
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return path, headers, body


def _response(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Content-Type: application/json", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(url="")
    json = orjson.dumps(ANSWER)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.writers.append(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                state.requests.append(request)
                path = request[0]
                if "/close-after" in path:  # answers, then closes the connection as if idle too long
                    writer.write(_response(json, "Connection: close"))
                    await writer.drain()
                    break
                elif "/cut" in path:  # half an answer, then the connection ends
                    writer.write(_response(json)[:-5])
                    await writer.drain()
                    break
                elif "/chunked" in path:
                    half = len(json) // 2
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for part in (json[:half], json[half:]):
                        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    writer.write(b"0\r\n\r\n")
                elif "/until-close" in path:  # no length: the body ends with the connection
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + json)
                    await writer.drain()
                    break
                elif "/gzip" in path:
                    writer.write(_response(gzip.compress(json), "Content-Encoding: gzip"))
                elif "/brotli" in path:
                    writer.write(_response(b"\x00\x01", "Content-Encoding: br"))
                elif "/garbage" in path:
                    writer.write(b"SMTP ready\r\n\r\n")
                elif "/slow" in path:  # held until the test releases it
                    state.in_flight += 1
                    state.most_in_flight = max(state.most_in_flight, state.in_flight)
                    await state.release.wait()
                    state.in_flight -= 1
                    writer.write(_response(json))
                elif "/silent" in path:  # reads the request, never answers
                    await asyncio.Event().wait()
                elif "/then-more" in path:  # an answer, then bytes nobody asked for
                    writer.write(_response(json))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(_response(json))
                elif "/error" in path:
                    writer.write(_response(b'{"error": {"message": "nope"}}', status="400 Bad Request"))
                else:
                    writer.write(_response(json))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/v1"
    yield state
    state.release.set()
    for writer in state.writers:
        writer.close()
    listener.close()


async def test_a_connection_is_kept_alive_and_reused(server: Server) -> None:
    pool = Http1Pool(server.url)
    for _ in range(5):
        status, body = await pool.post("/ok", b'{"a": 1}', {"content-type": "application/json", "x-k": "v"})
        assert status == 200 and orjson.loads(body) == ANSWER
    assert server.connections == 1 and len(server.requests) == 5
    path, headers, body = server.requests[0]
    assert path == "/v1/ok" and body == b'{"a": 1}'
    assert headers["host"] == server.url.split("/")[2] and headers["x-k"] == "v" and headers["content-length"] == "8"
    pool.close()


async def test_an_idle_connection_closed_by_the_server_is_replaced_and_the_request_sent_once(server: Server) -> None:
    pool = Http1Pool(server.url)
    assert (await pool.post("/close-after", b"{}", {}))[0] == 200  # the server closes after answering
    await asyncio.sleep(0)  # (the client may or may not have seen the close yet: both ways must work)
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    assert [r[0] for r in server.requests] == ["/v1/close-after", "/v1/ok"] and server.connections == 2
    pool.close()


async def test_a_connection_found_closing_before_the_request_is_written_is_replaced(server: Server) -> None:
    pool = Http1Pool(server.url)
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    (idle,) = pool._idle
    idle.transport.close()  # closing, though not yet closed: nothing may be written on it
    assert not idle.closed
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    assert [r[0] for r in server.requests] == ["/v1/ok", "/v1/ok"] and server.connections == 2
    pool.close()


async def test_a_request_is_never_sent_twice_even_when_its_connection_closes_unanswered(server: Server) -> None:
    pool = Http1Pool(server.url)
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    server.writers[0].close()  # the server drops the idle connection; the client has not seen it yet...
    assert not pool._idle[0].closed
    with pytest.raises(HTTPConnectionError, match="closed the connection before answering"):
        await pool.post("/ok", b"{}", {})  # ...and sends on it: it may have been delivered, so not again
    assert len(server.requests) <= 2 and server.connections == 1
    assert (await pool.post("/ok", b"{}", {}))[0] == 200  # the next request opens a new connection
    assert server.connections == 2
    pool.close()


async def test_a_connection_idle_too_long_is_not_reused(server: Server) -> None:
    pool = Http1Pool(server.url, idle_s=0.0)
    for _ in range(3):
        assert (await pool.post("/ok", b"{}", {}))[0] == 200
    assert server.connections == 3
    pool.close()


async def test_bytes_that_arrive_between_requests_end_the_connection(server: Server) -> None:
    pool = Http1Pool(server.url)
    assert (await pool.post("/then-more", b"{}", {}))[0] == 200
    (idle,) = pool._idle
    while not idle.closed:  # the stray answer arrives while idle: the connection is dropped, not reused
        await asyncio.sleep(0.01)
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    assert server.connections == 2
    pool.close()


async def test_a_connection_in_flight_when_the_pool_closes_is_closed_after_its_request(server: Server) -> None:
    pool = Http1Pool(server.url)
    call = asyncio.create_task(pool.post("/slow", b"{}", {}))
    while server.in_flight < 1:
        await asyncio.sleep(0.01)
    pool.close()
    server.release.set()
    assert (await call)[0] == 200
    assert pool._idle == []


async def test_an_answer_cut_midway_is_an_error_and_not_sent_again(server: Server) -> None:
    pool = Http1Pool(server.url)
    with pytest.raises(HTTPConnectionError, match="before the answer was complete"):
        await pool.post("/cut", b"{}", {})
    assert len(server.requests) == 1
    pool.close()


@pytest.mark.parametrize("path", ["/chunked", "/until-close", "/gzip"])
async def test_answers_framed_by_chunks_or_by_the_end_or_compressed_are_read_whole(server: Server, path: str) -> None:
    pool = Http1Pool(server.url)
    status, body = await pool.post(path, b"{}", {})
    assert status == 200 and orjson.loads(body) == ANSWER
    pool.close()


@pytest.mark.parametrize(("path", "says"), [("/brotli", "content-encoding br"), ("/garbage", "not HTTP")])
async def test_an_answer_it_cannot_read_is_an_error(server: Server, path: str, says: str) -> None:
    pool = Http1Pool(server.url)
    with pytest.raises(HTTPConnectionError, match=says):
        await pool.post(path, b"{}", {})
    pool.close()


async def test_no_more_than_max_connections_requests_are_in_flight(server: Server) -> None:
    pool = Http1Pool(server.url, max_connections=2)
    calls = [asyncio.create_task(pool.post("/slow", b"{}", {})) for _ in range(5)]
    while server.in_flight < 2:
        await asyncio.sleep(0.01)
    for _ in range(20):  # give the other three every chance to get through if the limit leaked
        await asyncio.sleep(0)
    assert server.in_flight == 2 and len(server.requests) == 2
    server.release.set()
    assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 5
    assert server.most_in_flight == 2 and server.connections == 2
    pool.close()


async def test_a_refused_connection_and_a_connect_timeout_are_told_apart() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(HTTPConnectionError, match="cannot connect"):
        await Http1Pool(f"http://127.0.0.1:{port}").post("/x", b"{}", {})
    pool = Http1Pool("http://127.0.0.1:9", connect_timeout_s=0.05)
    never = asyncio.get_running_loop().create_future()

    async def hangs(*args: object, **kwargs: object) -> None:
        await never

    pool.loop = type("Loop", (), {"create_connection": staticmethod(hangs), "time": pool.loop.time})()  # type: ignore[assignment]
    with pytest.raises(ConnectTimeout, match="no connection within 0.05 s"):
        await pool.post("/x", b"{}", {})


async def test_the_backend_maps_the_clients_failures_to_upstream_errors(server: Server) -> None:
    backend = OpenAIHTTPBackend(base_url=server.url, total_timeout_s=0.2, api_key="sk-test")
    assert await backend.complete({"model": "m", "messages": []}) == ANSWER
    assert server.requests[0][0] == "/v1/chat/completions" and orjson.loads(server.requests[0][2])["model"] == "m"
    backend._pool = Http1Pool(server.url.replace("/v1", "/v1/silent"))
    with pytest.raises(UpstreamTimeout, match="the attempt took over 0.2 s"):
        await backend.complete({"model": "m", "messages": []})
    assert backend.outcomes.reachable is False
    backend._pool = Http1Pool(server.url.replace("/v1", "/v1/cut"))
    with pytest.raises(UpstreamError, match="upstream unreachable: HTTPConnectionError") as cut:
        await backend.complete({"model": "m", "messages": []})
    assert cut.value.retryable
    backend._pool = Http1Pool(server.url.replace("/v1", "/v1/error"))
    with pytest.raises(UpstreamError, match="upstream returned 400: nope") as refused:
        await backend.complete({"model": "m", "messages": []})
    assert refused.value.status == 400 and not refused.value.retryable
    assert all(headers["authorization"] == "Bearer sk-test" for _, headers, _ in server.requests)
    await backend.aclose()


async def test_a_forwarded_key_with_a_line_break_is_refused_before_anything_is_sent(server: Server) -> None:
    backend = OpenAIHTTPBackend(base_url=server.url)
    with pytest.raises(InvalidRequest, match="line break"):
        await backend.complete({"model": "m", "messages": []}, api_key="sk-a\r\nx-evil: 1")
    assert server.requests == []
    await backend.aclose()


async def test_a_request_waiting_for_a_slot_times_out_or_is_cancelled_without_losing_the_slot(server: Server) -> None:
    pool = Http1Pool(server.url, max_connections=1)
    first = asyncio.create_task(pool.post("/slow", b"{}", {}))
    while server.in_flight < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):  # it never got the one slot
        await pool.post("/ok", b"{}", {}, timeout_s=0.05)
    waiting = asyncio.create_task(pool.post("/ok", b"{}", {}))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(server.requests) == 1  # neither of the two was sent
    server.release.set()
    assert (await first)[0] == 200
    assert (await pool.post("/ok", b"{}", {}))[0] == 200  # the slot came back, once
    assert pool._slots.free == 1 and not pool._slots.waiters
    pool.close()


async def test_an_answer_past_its_deadline_fails_with_a_timeout_and_its_connection_closes(server: Server) -> None:
    pool = Http1Pool(server.url)
    with pytest.raises(TimeoutError):
        await pool.post("/silent", b"{}", {}, timeout_s=0.05)
    assert not pool._idle and not pool._sending  # the connection in an unknown state is not reused
    assert (await pool.post("/ok", b"{}", {}))[0] == 200
    pool.close()


async def test_a_short_deadline_is_kept_while_a_long_one_is_in_flight(server: Server) -> None:
    pool = Http1Pool(server.url)
    long = asyncio.create_task(pool.post("/slow", b"{}", {}, timeout_s=60))  # sweeps every second
    while server.in_flight < 1:
        await asyncio.sleep(0.01)
    assert pool._sweep_interval == 1.0
    with pytest.raises(TimeoutError):  # swept every 10 ms from now on, not every second
        await pool.post("/silent", b"{}", {}, timeout_s=0.05)
    assert pool._sweep_interval == 0.01
    server.release.set()
    assert (await long)[0] == 200
    pool.close()
