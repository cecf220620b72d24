"""The LiteLLM backend through LiteLLM's own client, against a fake OpenAI-compatible server on loopback
(`openai/<model>` with its api_base): completions, streams, and upstream failures mapped to optigraph's
errors. Nothing leaves the machine (LiteLLM's price list is read from the package, never fetched)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import HTTPFailure, ServerThread, UpstreamLog, echo_responder, make_app  # noqa: E402

from optigraph.backends.litellm_backend import LiteLLMBackend  # noqa: E402
from optigraph.errors import UpstreamError, UpstreamTimeout  # noqa: E402

HELLO = [{"role": "user", "content": "hello there"}]


class Script:
    def __init__(self) -> None:
        self.fn: Any = echo_responder

    def __call__(self, body: dict[str, Any], index: int) -> Any:
        return self.fn(body, index)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServerThread, UpstreamLog, Script]]:
    log, script = UpstreamLog(), Script()
    with ServerThread(make_app(script, log=log)) as up:
        yield up, log, script


@pytest.fixture
def upstream(served: tuple[ServerThread, UpstreamLog, Script]) -> Iterator[tuple[ServerThread, UpstreamLog, Script]]:
    up, log, script = served
    log.bodies.clear()
    log.headers.clear()
    script.fn = echo_responder
    yield served
    script.fn = echo_responder


def backend_for(up: ServerThread, **kw: Any) -> LiteLLMBackend:
    return LiteLLMBackend(api_key="upstream-key", api_base=up.url + "/v1", **kw)


async def test_complete_goes_through_litellm_to_the_server(upstream: Any) -> None:
    up, log, _ = upstream
    resp = await backend_for(up).complete(
        {"model": "openai/fake-model", "messages": HELLO, "temperature": 0.3, "max_tokens": 20}
    )
    assert resp["choices"][0]["message"]["content"] == "echo: hello there"
    assert resp["choices"][0]["finish_reason"] == "stop"
    # the fake server counts words: 2 prompt, 3 completion
    usage = resp["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)
    [sent] = log.bodies
    assert sent["model"] == "fake-model" and sent["messages"] == HELLO  # the provider prefix is LiteLLM's
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 20
    assert log.headers[0]["authorization"] == "Bearer upstream-key"


async def test_the_litellm_prefix_is_removed_and_a_clients_key_used_without_a_server_key(upstream: Any) -> None:
    up, log, _ = upstream
    backend = LiteLLMBackend(api_base=up.url + "/v1")
    resp = await backend.complete({"model": "litellm/openai/fake-model", "messages": HELLO}, api_key="client-key")
    assert resp["choices"][0]["message"]["content"] == "echo: hello there"
    assert log.bodies[0]["model"] == "fake-model" and log.headers[0]["authorization"] == "Bearer client-key"


async def test_stream_yields_the_servers_chunks(upstream: Any) -> None:
    up, log, _ = upstream
    body = {
        "model": "openai/fake-model",
        "messages": [{"role": "user", "content": "a b c"}],
        "stream_options": {"include_usage": True},
    }
    chunks = [c async for c in backend_for(up).stream(body)]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c.get("choices", []))
    assert text == "echo: a b c"
    assert [ch["finish_reason"] for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")] == ["stop"]
    assert [c["usage"]["completion_tokens"] for c in chunks if c.get("usage")][-1] == 4
    assert log.bodies[0]["stream"] is True


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "status,retryable,client_status", [(400, False, 400), (404, False, 404), (429, True, 429), (503, True, 502)]
)
async def test_upstream_http_errors_are_mapped(
    upstream: Any, stream: bool, status: int, retryable: bool, client_status: int
) -> None:
    up, log, script = upstream
    script.fn = lambda body, i: HTTPFailure(status, f"no thanks ({status})")
    backend = backend_for(up)
    body = {"model": "openai/fake-model", "messages": HELLO}
    with pytest.raises(UpstreamError) as info:
        if stream:
            [c async for c in backend.stream(body)]
        else:
            await backend.complete(body)
    err = info.value
    assert type(err) is UpstreamError
    assert err.upstream_status == status and err.retryable is retryable
    assert err.status == client_status  # a client's own mistake keeps its 4xx; the rest is a bad gateway
    assert f"no thanks ({status})" in str(err)
    assert len(log.bodies) >= 1


async def test_a_server_that_does_not_answer_in_time_is_an_upstream_timeout() -> None:
    log = UpstreamLog()
    with ServerThread(make_app(log=log, latency=5.0)) as up:
        backend = backend_for(up, total_timeout_s=0.5, read_timeout_s=0.5)
        with pytest.raises(UpstreamTimeout) as info:
            await backend.complete({"model": "openai/fake-model", "messages": HELLO})
    assert info.value.status == 504 and info.value.retryable
    assert log.bodies and log.bodies[0]["model"] == "fake-model"
