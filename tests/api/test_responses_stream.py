"""The chat-stream to Responses-events translator (api/responses_stream.py) on chunk sequences the
fake upstream does not produce: an error after the stream began, interleaved branches, a length stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from optigraph.api.responses_stream import ResponseEvents


def _frames(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return gen()


def _delta(index: int, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


async def _events(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = ResponseEvents({"model": "m", "input": "x"}, run_id="r1", model="m")
    out = []
    async for frame in events.translate(_frames(chunks)):
        head, data = frame.decode().strip().split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        out.append(event)
    return out


async def test_an_error_after_the_first_chunk_fails_the_response() -> None:
    events = await _events(
        [_delta(0, content="partial"), {"error": {"message": "upstream went away", "code": "upstream_error"}}]
    )
    assert [e["type"] for e in events][-1] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "upstream_error",
        "message": "upstream went away",
    }
    assert "response.completed" not in [e["type"] for e in events]


async def test_interleaved_branches_keep_their_own_items() -> None:
    events = await _events(
        [
            _delta(0, content="a1"),
            _delta(1, content="b1"),
            _delta(0, content="a2"),
            _delta(1, "stop", content="b2"),
            _delta(0, "length"),
            {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}},
        ]
    )
    deltas = [(e["output_index"], e["delta"]) for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == [(0, "a1"), (1, "b1"), (0, "a2"), (1, "b2")]
    final = events[-1]
    assert final["type"] == "response.incomplete"  # a branch stopped at the token limit
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    first, second = final["response"]["output"]
    assert (first["content"][0]["text"], first["status"]) == ("a1a2", "incomplete")
    assert (second["content"][0]["text"], second["status"]) == ("b1b2", "completed")
    assert final["response"]["usage"]["output_tokens"] == 4
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_text_then_tool_calls_close_the_message_first() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    events = await _events(
        [
            _delta(0, content="let me look"),
            _delta(0, tool_calls=[call]),
            _delta(0, tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]),
            _delta(0, "tool_calls"),
        ]
    )
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    message, fc = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "let me look"
    assert (fc["call_id"], fc["name"], fc["arguments"], fc["status"]) == ("c1", "f", '{"a": 1}', "completed")
