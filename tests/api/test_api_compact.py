"""The compact plugin through the real server with the official openai client: a conversation past a
share of the model's window has its old turns summarised by one call, the system turns and the last
turns kept word for word; a short one goes through untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from api_stack import Stack

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry
from optigraph.plugins.compact import DEFAULT_WINDOW, SUMMARY_HEADER, window_of

SUMMARY = "The user is planning a trip to Lisbon in May with a budget of 900 euros."
SYSTEM = {"role": "system", "content": "You are a travel agent."}


def responder(body: dict[str, Any], index: int) -> str:
    if body["messages"][0]["content"].startswith("You summarise the earlier part"):
        return SUMMARY
    return "Book the 9:40 train."


@pytest.fixture
def agent(stack: Stack) -> Iterator[Stack]:
    stack.script.fn = responder
    yield stack


def long_conversation(turns: int = 12, words: int = 60) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        out.append({"role": role, "content": f"turn {i}: " + " ".join(["details"] * words)})
    out.append({"role": "user", "content": "So which train should I take?"})
    return out


def ask(stack: Stack, messages: list[dict[str, Any]], **compact: Any) -> Any:
    return stack.client().chat.completions.create(
        model="compact-fake-model",
        messages=messages,
        extra_body={"optillm_params": {"compact": compact}} if compact else None,
    )


def test_old_turns_are_summarised_once_past_the_share(agent: Stack) -> None:
    messages = long_conversation(words=30)  # about 900 estimated tokens
    response = ask(agent, messages, context_window=1000, keep_last=3, summary_tokens=64)
    assert response.choices[0].message.content == "Book the 9:40 train."
    summarise, answer = agent.log.bodies
    transcript = summarise["messages"][1]["content"]
    assert "[user] turn 0:" in transcript and "[assistant] turn 9:" in transcript and "turn 10" not in transcript
    assert summarise["max_tokens"] == 64
    sent = answer["messages"]
    assert sent[0] == SYSTEM  # kept word for word
    assert sent[1] == {"role": "system", "content": f"{SUMMARY_HEADER}\n{SUMMARY}"}
    assert sent[2:] == messages[-3:]  # the last turns kept word for word
    run_id = response.model_extra["optigraph"]["run_id"]
    agent.run(run_id)  # stored as finished: its calls are written
    assert [c["node"] for c in agent.calls(run_id)] == ["compact.summarise", "passthrough"]
    spec = builtin_registry().get("compact")
    assert response.model_extra["optigraph"]["upstream_calls"] == 1 + evaluate(spec.calls, spec.validate_params({}))
    with agent.http() as http:
        trace = json.dumps(http.get(f"/v1/runs/{run_id}").json())
    assert "compact: " in trace and "summarised 10 turn(s), kept 1 system and 3 last" in trace


def test_old_turns_longer_than_the_window_are_cut_from_their_start_for_the_summary(agent: Stack) -> None:
    messages = long_conversation(turns=40, words=200)  # over ten times the window
    ask(agent, messages, context_window=1000, summary_tokens=64)
    transcript = agent.log.bodies[0]["messages"][1]["content"]
    assert transcript.startswith("[... the earliest turns were cut ...]")
    assert len(transcript) <= (1000 - 64 - 200) * 4 + 100 and "[user] turn 36:" in transcript
    sent = agent.log.bodies[1]["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "assistant", "user", "assistant", "user"]
    assert sent[2:] == messages[-4:]


def test_a_conversation_within_the_share_is_untouched(agent: Stack) -> None:
    messages = long_conversation(turns=2, words=10)
    response = ask(agent, messages)  # the default window: fake-model is in no table
    assert [b["messages"] for b in agent.log.bodies] == [messages]
    assert response.model_extra["optigraph"]["upstream_calls"] == 1


def test_the_kept_tail_never_starts_with_a_tool_result(agent: Stack) -> None:
    messages = long_conversation(turns=8)
    call = {"id": "c1", "type": "function", "function": {"name": "trains", "arguments": '{"to": "Lisbon"}'}}
    messages[-1:] = [
        {"role": "user", "content": "Find me trains."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "9:40, 11:15"},
        {"role": "user", "content": "Which one?"},
    ]
    ask(agent, messages, context_window=600, keep_last=2)
    sent = agent.log.bodies[1]["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "assistant", "tool", "user"]
    assert sent[2]["tool_calls"][0]["id"] == "c1"


def test_streaming_answers_after_the_summary(agent: Stack) -> None:
    stream = agent.client().chat.completions.create(
        model="compact-fake-model",
        messages=long_conversation(),
        stream=True,
        extra_body={"optillm_params": {"compact": {"context_window": 1000}}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Book the 9:40 train."
    assert len(agent.log.bodies) == 2


def test_the_window_comes_from_the_parameter_the_table_or_the_default() -> None:
    assert window_of("gpt-4o-mini", None)[0] == 128_000
    assert window_of("openai/gpt-4-0613", None)[0] == 8_192
    assert window_of("qwen2.5-coder-1.5b", None)[0] == 32_768
    assert window_of("qwen2.5-coder-1.5b", 4096) == (4096, "the context_window parameter")
    assert window_of("my-model", None) == (DEFAULT_WINDOW, "the default")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"share": 0}, "optillm_params.compact.share"),
        ({"share": 1.5}, "optillm_params.compact.share"),
        ({"context_window": 10}, "optillm_params.compact.context_window"),
        ({"keep_last": -1}, "optillm_params.compact.keep_last"),
        ({"turns": 3}, "optillm_params.compact.turns"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(agent: Stack, params: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(agent, long_conversation(), **params)
    assert err.value.body["param"] == param and err.value.body["code"] == "invalid_approach_parameter"
    assert agent.log.bodies == []
