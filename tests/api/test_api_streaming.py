"""Streaming (`stream: true`): chunks relayed as they arrive, tool_calls deltas, the usage chunk,
`[DONE]`, for the passthrough and for composite expressions."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from api_stack import Stack, fake_usage, start_stack
from upstream import ChunkGate

HELLO = [{"role": "user", "content": "hello there"}]


def sse_events(stack: Stack, body: dict) -> tuple[dict[str, str], list[str]]:
    """Raw SSE `data:` payloads of a streamed request, and the response headers."""
    with (
        stack.http() as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers={"authorization": "Bearer client-key"}) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
        return dict(resp.headers), lines


def test_stream_passthrough_raw_sse(stack: Stack) -> None:
    headers, lines = sse_events(stack, {"model": "none-fake-model", "messages": HELLO, "stream": True})
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    run_id = headers["x-optigraph-run-id"]
    for c in chunks:
        assert c["id"] == f"chatcmpl-{run_id}" and c["object"] == "chat.completion.chunk"
        assert c["model"] == "fake-model" and isinstance(c["created"], int)
        assert "usage" not in c or c["usage"] is None  # not asked for
    pieces = [ch["delta"].get("content") for c in chunks for ch in c["choices"] if ch["delta"].get("content")]
    assert pieces == ["echo:", " hello", " there"]  # relayed one by one, not merged
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stack.log.bodies[0]["model"] == "fake-model" and stack.log.bodies[0]["stream"] is True
    # the run still records what the upstream reported, though the client did not ask for usage
    run = stack.run(run_id)
    assert run["status"] == "completed" and run["total_tokens"] == 5 and run["reasoning_tokens"] == 3


def test_stream_openai_client_with_usage(stack: Stack) -> None:
    with stack.client().chat.completions.with_streaming_response.create(
        model="fake-model",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"my_vendor_field": "x"},
    ) as resp:
        run_id = resp.headers["x-optigraph-run-id"]
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    u = usage_chunks[0].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (2, 3, 5)
    assert u.completion_tokens_details.reasoning_tokens == 3
    assert chunks[-1].model_extra["optigraph"] == {"run_id": run_id, "approach": "none", "upstream_calls": 1}
    assert stack.log.bodies[0]["my_vendor_field"] == "x"


async def test_stream_async_client(stack: Stack) -> None:
    async with stack.aclient() as client:
        stream = await client.chat.completions.create(model="fake-model", messages=HELLO, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces == ["echo:", " hello", " there"]


def test_stream_tool_call_deltas_are_relayed_and_reassemble(stack: Stack) -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
    ]
    stack.script.fn = lambda body, i: {"content": None, "tool_calls": calls}
    stream = stack.client().chat.completions.create(
        model="fake-model",
        messages=HELLO,
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather"}}],
    )
    chunks = list(stream)
    deltas = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert len(deltas) == 4  # two pieces per call, relayed as the upstream sent them
    merged: dict[int, dict] = {}
    for tc in deltas:
        cur = merged.setdefault(tc.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        cur["id"] = tc.id or cur["id"]
        if tc.function.name:
            cur["function"]["name"] += tc.function.name
        cur["function"]["arguments"] += tc.function.arguments or ""
    assert [merged[i] for i in sorted(merged)] == calls
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("expression", ["none|none", "none&none", "(none|none)&none"])
def test_stream_composite(stack: Stack, expression: str) -> None:
    stream = stack.client().chat.completions.create(
        model=f"{expression}-fake-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for c in chunks:
        assert c.model == "fake-model"
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    branches = 2 if "|" in expression else 1
    answer = "echo: hello there" if "&" not in expression else "echo: echo: hello there"
    assert texts == {i: answer for i in range(branches)}
    assert finish == {i: "stop" for i in range(branches)}
    calls = {"none|none": 2, "none&none": 2, "(none|none)&none": 4}[expression]
    assert len(stack.log.bodies) == calls
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == fake_usage(
        stack.log.bodies
    )
    assert usage.completion_tokens_details.reasoning_tokens == 3 * calls
    ext = chunks[-1].model_extra["optigraph"]
    assert ext["approach"] == expression and ext["upstream_calls"] == calls
    run = stack.run(ext["run_id"])
    assert run["status"] == "completed" and run["calls"] == calls and run["total_tokens"] == usage.total_tokens


def test_stream_pipeline_second_stage_sees_first_answer(stack: Stack) -> None:
    list(stack.client().chat.completions.create(model="none&none-fake-model", messages=HELLO, stream=True))
    first, second = stack.log.bodies
    assert first["messages"][-1]["content"] == "hello there"
    assert second["messages"][-1]["content"] == "echo: hello there"


# ---- chunks arrive as the upstream produces them ----------------------------------------------


@pytest.fixture(scope="module")
def gated_stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, ChunkGate]]:
    gate = ChunkGate()
    with start_stack(tmp_path_factory.mktemp("drip") / "o.db", upstream={"chunk_gate": gate}) as s:
        yield s, gate


@pytest.mark.parametrize("model", ["fake-model", "none&none-fake-model"])
def test_stream_relays_chunks_as_they_arrive(gated_stream: tuple[Stack, ChunkGate], model: str) -> None:
    stack, gate = gated_stream
    gate.reset()
    pieces: list[str] = []
    stream = stack.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            pieces.append(c.choices[0].delta.content)
            gate.received()  # only now does the upstream send the next piece
    # every piece after the first was sent by the upstream only once the client had the one before it:
    # a proxy that buffered would have stalled the stream
    expected = "echo: a b c" if model == "fake-model" else "echo: echo: a b c"  # the pipeline echoes twice
    assert not gate.stalled
    assert "".join(pieces) == expected and gate.sent == len(pieces) - 1 == len(expected.split()) - 1


@pytest.mark.parametrize("model", ["fake-model", "none&none-fake-model"])
def test_client_disconnect_mid_stream_is_recorded(gated_stream: tuple[Stack, ChunkGate], model: str) -> None:
    stack, gate = gated_stream
    gate.reset()  # the client never acknowledges a piece: the upstream holds the second until it is dropped
    body = {"model": model, "messages": [{"role": "user", "content": "a b c d e f g h"}], "stream": True}
    with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as resp:
        run_id = resp.headers["x-optigraph-run-id"]
        for line in resp.iter_lines():
            if '"content"' in line:
                break  # hang up after the first piece
    run = stack.run(run_id)
    assert run["status"] == "cancelled"
    assert run["error"]["error"]["code"] == "client_disconnected"
    # the upstream stream it abandoned is recorded as such, not as a finished call, before the run's
    # end is (so the run's usage counts it)
    calls = stack.calls(run_id)
    assert [c["status"] for c in calls] == ["ok"] * (len(calls) - 1) + ["error"]
    assert "cancelled" in calls[-1]["error"]
    assert run["calls"] == len(calls)
    assert gate.sent == 0


def test_stream_retried_when_the_upstream_fails_before_the_first_chunk(stack: Stack) -> None:
    from upstream import HTTPFailure, echo_responder

    failures = iter([HTTPFailure(503, "warming up")])

    def flaky(body: dict, index: int):
        return next(failures, None) or echo_responder(body, index)

    stack.script.fn = flaky
    raw = stack.client().chat.completions.with_raw_response.create(
        model="fake-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert len(stack.log.bodies) == 2  # the failed attempt, then the retry
    run_id = raw.headers["x-optigraph-run-id"]
    assert stack.run(run_id)["status"] == "completed"
    calls = stack.calls(run_id)
    assert [(c["status"], c["attempt"]) for c in calls] == [("error", 1), ("ok", 2)]
    assert chunks[-1].model_extra["optigraph"]["upstream_calls"] == 2  # every attempt (core/usage.py)


def test_a_streamed_passthrough_stores_its_answer(stack: Stack) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    stack.script.fn = lambda body, index: {"content": "looking", "tool_calls": calls}
    headers, _ = sse_events(stack, {"model": "fake-model", "messages": HELLO, "stream": True})
    stored = stack.run(headers["x-optigraph-run-id"])["response"]
    assert stored["streamed"] is True
    [choice] = stored["choices"]
    assert choice["message"] == {"role": "assistant", "content": "looking", "tool_calls": calls}
    assert choice["finish_reason"] == "tool_calls"
