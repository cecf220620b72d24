"""`a&b` passes the whole conversation on: only the last user turn's text becomes a's answer."""

from __future__ import annotations

from typing import Any

from engine_stack import ask, make_runner
from scripted import ScriptedBackend

from optigraph.core.messages import replace_last_user

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "-3C, snow"},
    {"role": "user", "name": "kim", "content": [{"type": "text", "text": "And this picture?"}, IMAGE]},
]


def test_replace_last_user_keeps_roles_fields_and_non_text_parts() -> None:
    out = replace_last_user(CONVERSATION, "new text")
    assert out[:4] == CONVERSATION[:4]
    assert out[4] == {"role": "user", "name": "kim", "content": [{"type": "text", "text": "new text"}, IMAGE]}
    assert CONVERSATION[4]["content"][0]["text"] == "And this picture?"  # the input is not changed


async def test_the_second_stage_sees_every_turn_with_its_role_and_parts() -> None:
    backend = ScriptedBackend(lambda body: f"answer {len(backend.calls)}")
    response = await ask(make_runner(backend), {"model": "none&none-m", "messages": CONVERSATION})
    first, second = (call["messages"] for call in backend.calls)
    assert first == CONVERSATION
    assert second[:4] == CONVERSATION[:4]  # system role, the assistant's tool call and the tool result kept
    assert second[4] == {"role": "user", "name": "kim", "content": [{"type": "text", "text": "answer 1"}, IMAGE]}
    assert response["choices"][0]["message"]["content"] == "answer 2"


async def test_an_answer_that_calls_tools_ends_the_pipeline_unchanged() -> None:
    call = {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    backend = ScriptedBackend(lambda body: {"content": None, "tool_calls": [call], "finish_reason": "tool_calls"})
    response = await ask(
        make_runner(backend),
        {
            "model": "none&none-m",
            "messages": CONVERSATION[:2],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
        },
    )
    assert len(backend.calls) == 1  # the second stage did not run: the client must run the tool first
    message = response["choices"][0]["message"]
    assert message["tool_calls"] == [call]
    assert response["choices"][0]["finish_reason"] == "tool_calls"
