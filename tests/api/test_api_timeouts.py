"""Upstream timeouts and retries (`serve --upstream-*-timeout`, `--upstream-retries`) against a real
upstream on loopback that stalls: the client gets an OpenAI-style 504 after retries + 1 attempts,
counted on the upstream; a stream that keeps sending bytes is never cut by the read timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from api_stack import Stack, start_stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from upstream import ServerThread

from optigraph.backends.litellm_backend import LiteLLMBackend
from optigraph.errors import UpstreamTimeout

MESSAGES = [{"role": "user", "content": "hi"}]


def stalling_upstream(attempts: list[str]) -> Starlette:
    """`stall` in the prompt: answer 200, send the start of the body, then nothing (until the client
    goes). `trickle`: a streamed answer preceded by 80 SSE comments, one every 50 ms."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        prompt = body["messages"][-1]["content"]
        attempts.append(prompt)

        async def stall() -> Any:
            yield b": started\n\n" if body.get("stream") else b'{"id": "chatcmpl-1", '
            await asyncio.Event().wait()  # never set: the connection is dropped by the client

        async def trickle() -> Any:
            for _ in range(80):
                yield b": still thinking\n\n"
                await asyncio.sleep(0.05)
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": "slow answer"}, "finish_reason": "stop"}
                ],
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"

        media = "text/event-stream" if body.get("stream") else "application/json"
        return StreamingResponse(stall() if "stall" in prompt else trickle(), media_type=media)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, list[str]]]:
    attempts: list[str] = []
    with ServerThread(stalling_upstream(attempts)) as up:
        yield up, attempts


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory, upstream: tuple[ServerThread, list[str]]) -> Iterator[Stack]:
    up, _ = upstream
    with start_stack(
        tmp_path_factory.mktemp("stall") / "o.db",
        base_url=up.url + "/v1",
        upstream_retries=2,
        upstream_read_timeout_s=0.5,
        upstream_total_timeout_s=2.0,
    ) as s:
        yield s


def post(stack: Stack, content: str, **body: Any) -> httpx.Response:
    with stack.http() as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": content}], **body},
        )


@pytest.mark.parametrize(
    ("stream", "says"),
    [
        (False, "the attempt took over 2 s"),  # a non-streamed answer is bounded by the total timeout
        (True, "nothing received for 0.5 s"),  # a stream by the read timeout
    ],
)
def test_a_stalled_upstream_is_a_504_after_retries_plus_one_attempts(
    stalled: Stack, upstream: tuple[ServerThread, list[str]], stream: bool, says: str
) -> None:
    _, attempts = upstream
    prompt = f"stall (stream={stream})"
    resp = post(stalled, prompt, stream=stream)
    assert resp.status_code == 504, resp.text
    error = resp.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_timeout"
    assert says in error["message"], error["message"]
    assert attempts.count(prompt) == 3  # upstream_retries=2: three attempts reached the upstream
    run_id = resp.headers["x-optigraph-run-id"]
    assert stalled.run(run_id)["status"] == "failed"  # waits for the background writer
    calls = stalled.calls(run_id)
    assert [c["attempt"] for c in calls] == [1, 2, 3] and all(says in c["error"] for c in calls)


def test_a_byte_resets_the_read_timeout(tmp_path: Path, upstream: tuple[ServerThread, list[str]]) -> None:
    up, attempts = upstream
    # 80 comments 50 ms apart take 4 s, eight times the 0.5 s read timeout: never cut, one attempt
    with start_stack(
        tmp_path / "o.db",
        base_url=up.url + "/v1",
        upstream_retries=2,
        upstream_read_timeout_s=0.5,
        upstream_total_timeout_s=120,
    ) as s:
        resp = post(s, "trickle", stream=True)
    assert resp.status_code == 200, resp.text
    assert "slow answer" in resp.text and resp.text.rstrip().endswith("data: [DONE]")
    assert attempts.count("trickle") == 1


async def test_litellm_uses_the_same_timeouts_and_leaves_retries_to_optigraph(
    upstream: tuple[ServerThread, list[str]],
) -> None:
    up, attempts = upstream
    backend = LiteLLMBackend(api_key="k", api_base=up.url + "/v1", read_timeout_s=0.5, total_timeout_s=2.0)
    with pytest.raises(UpstreamTimeout):
        await backend.complete(
            {"model": "openai/fake-model", "messages": [{"role": "user", "content": "stall litellm"}]}
        )
    assert attempts.count("stall litellm") == 1  # LiteLLM's own retries are off: one attempt per call
    assert backend.outcomes.reachable is False and "timed out" in (backend.outcomes.last_error or "")
