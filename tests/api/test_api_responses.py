"""POST /v1/responses and GET /v1/responses/{id} (the Responses API), driven with the official openai
client against a real server and fake upstream on loopback: input items, instructions, function
tools, text.format, streaming events, previous_response_id from the runs table, approach selection."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from api_stack import Stack, last_user_text
from pydantic import BaseModel

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def calls_weather_until_told(body: dict[str, Any], index: int) -> Any:
    """Calls get_weather first; answers from the tool's output once it is in the conversation."""
    tool = [m for m in body["messages"] if m.get("role") == "tool"]
    if tool:
        return f"it is {tool[-1]['content']}"
    return {"content": None, "tool_calls": [WEATHER_CALL]}


def test_string_input_with_instructions_and_sampling_fields(stack: Stack) -> None:
    client = stack.client()
    resp = client.responses.create(
        model="fake-model",
        input="hello there",
        instructions="be brief",
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        metadata={"team": "a"},
        store=True,
    )
    assert resp.output_text == "echo: hello there"
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.model == "fake-model" and resp.instructions == "be brief" and resp.metadata == {"team": "a"}
    assert resp.max_output_tokens == 50 and resp.temperature == 0.5 and resp.top_p == 0.9
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    upstream = stack.log.bodies[0]
    assert upstream["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert (upstream["max_tokens"], upstream["temperature"], upstream["top_p"]) == (50, 0.5, 0.9)
    assert not {"metadata", "store", "input", "instructions", "max_output_tokens"} & set(upstream)
    # usage in the Responses shape: the fake counts words (4 in, 3 out) and reports 3 reasoning tokens
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (4, 3, 7)
    assert resp.usage.output_tokens_details.reasoning_tokens == 3
    run = stack.run(resp.id.removeprefix("resp_"))
    assert run["status"] == "completed" and run["expression"] == "none"


def test_message_items_with_content_parts(stack: Stack) -> None:
    resp = stack.client().responses.create(
        model="fake-model",
        input=[
            {"role": "developer", "content": "answer in French"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        ],
    )
    assert resp.output_text == "echo: ab"
    assert stack.log.bodies[0]["messages"] == [
        {"role": "developer", "content": "answer in French"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]


def test_function_tools_round_trip(stack: Stack) -> None:
    stack.script.fn = calls_weather_until_told
    client = stack.client()
    first = client.responses.create(
        model="fake-model", input="weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto"
    )
    assert stack.log.bodies[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    assert stack.log.bodies[0]["tool_choice"] == "auto"
    [call] = first.output  # no text: only the function call item
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_1"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.status == "completed"
    assert first.output_text == ""
    second = client.responses.create(
        model="fake-model",
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert second.output_text == "it is sunny"
    sent = stack.log.bodies[1]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


class City(BaseModel):
    name: str
    population: int


def test_text_format_json_schema_and_sdk_parse(stack: Stack) -> None:
    stack.script.fn = lambda body, i: '{"name": "Paris", "population": 2100000}'
    parsed = stack.client().responses.parse(model="fake-model", input="a city", text_format=City)
    assert parsed.output_parsed == City(name="Paris", population=2100000)
    fmt = stack.log.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["schema"]["properties"]["population"] == {"title": "Population", "type": "integer"}
    assert parsed.text.format.type == "json_schema"


def _events(stack: Stack, **kw: Any) -> list[Any]:
    with stack.client().responses.create(stream=True, **kw) as stream:
        return list(stream)


def test_streaming_event_sequence(stack: Stack) -> None:
    events = _events(stack, model="fake-model", input="hello there", instructions="hi")
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["echo:", " hello", " there"]
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "echo: hello there"
    assert events[-2].item.id == done.output[0].id == events[2].item.id
    assert (done.usage.input_tokens, done.usage.output_tokens) == (3, 3)
    assert stack.log.bodies[0]["stream"] is True
    run = stack.run(done.id.removeprefix("resp_"))
    assert run["status"] == "completed"
    # a streamed passthrough stores its answer, which GET reads back
    again = stack.client().responses.retrieve(done.id)
    assert again.output_text == "echo: hello there" and again.status == "completed"


def test_streaming_function_call_events(stack: Stack) -> None:
    stack.script.fn = calls_weather_until_told
    events = _events(stack, model="fake-model", input="weather?", tools=[WEATHER_TOOL])
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2].item
    assert added.type == "function_call" and added.name == "get_weather" and added.call_id == "call_1"
    assert "".join(e.delta for e in events if e.type.endswith("arguments.delta")) == '{"city": "Paris"}'
    assert events[5].arguments == '{"city": "Paris"}'
    [call] = events[-1].response.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}


def test_stream_helper_of_the_sdk(stack: Stack) -> None:
    with stack.client().responses.stream(model="fake-model", input="stream helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: stream helper"


@pytest.mark.parametrize("stream_first", [False, True])
def test_previous_response_id_continues_from_the_runs_table(stack: Stack, stream_first: bool) -> None:
    client = stack.client()
    if stream_first:
        first = _events(stack, model="fake-model", input="my name is Ann", instructions="old rules")[-1].response
    else:
        first = client.responses.create(model="fake-model", input="my name is Ann", instructions="old rules")
    second = client.responses.create(
        model="fake-model", input="what is my name?", instructions="new rules", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert stack.log.bodies[1]["messages"] == [  # the old instructions are not carried over, as OpenAI does
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "my name is Ann"},
        {"role": "assistant", "content": "echo: my name is Ann"},
        {"role": "user", "content": "what is my name?"},
    ]
    third = client.responses.create(model="fake-model", input="and now?", previous_response_id=second.id)
    assert [m["content"] for m in stack.log.bodies[2]["messages"]] == [
        "my name is Ann",
        "echo: my name is Ann",
        "what is my name?",
        "echo: what is my name?",
        "and now?",
    ]
    assert third.output_text == "echo: and now?"


def test_unknown_or_unstored_responses_are_404(stack: Stack) -> None:
    client = stack.client()
    for bad in ("resp_nope", "nope"):
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.create(model="fake-model", input="x", previous_response_id=bad)
        assert err.value.body["param"] == "previous_response_id" and err.value.body["code"] == "response_not_found"
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(bad)
    unstored = client.responses.create(model="fake-model", input="forget me", store=False)
    assert unstored.store is False and unstored.output_text == "echo: forget me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake-model", input="x", previous_response_id=unstored.id)
    # a chat completion's run is not a response
    chat = stack.http().post(
        "/v1/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": "Bearer k"},
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + chat.headers["x-optigraph-run-id"])


def test_retrieve_a_stored_response(stack: Stack) -> None:
    client = stack.client()
    made = client.responses.create(model="fake-model", input="keep me", metadata={"k": "v"})
    got = client.responses.retrieve(made.id)
    assert got.id == made.id and got.status == "completed" and got.output_text == "echo: keep me"
    assert got.metadata == {"k": "v"} and got.usage.total_tokens == made.usage.total_tokens
    assert got.model_extra["optigraph"]["run_id"] == made.id.removeprefix("resp_")


def test_approach_selected_by_prefix_body_and_tag(stack: Stack) -> None:
    client = stack.client()
    by_prefix = client.responses.create(model="re2-fake-model", input="twice")
    assert by_prefix.model_extra["optigraph"]["approach"] == "re2"
    assert "twice" in last_user_text(stack.log.bodies[-1]) and "Read the question again" in last_user_text(
        stack.log.bodies[-1]
    )
    by_body = client.responses.create(model="fake-model", input="x", extra_body={"optillm_approach": "re2"})
    assert by_body.model_extra["optigraph"]["approach"] == "re2"
    by_tag = client.responses.create(
        model="fake-model", input="x", instructions="<optillm_approach>re2</optillm_approach> be nice"
    )
    assert by_tag.model_extra["optigraph"]["approach"] == "re2"
    assert stack.log.bodies[-1]["messages"][0] == {"role": "system", "content": "be nice"}
    moa = client.responses.create(model="moa-fake-model", input="several calls")
    assert moa.model_extra["optigraph"]["upstream_calls"] > 1 and moa.output_text
    assert stack.run(moa.id.removeprefix("resp_"))["expression"] == "moa"


def test_parallel_branches_answer_one_message_each(stack: Stack) -> None:
    resp = stack.client().responses.create(
        model="fake-model", input="two ways", extra_body={"optillm_approach": "none|re2"}
    )
    assert [item.type for item in resp.output] == ["message", "message"]
    assert len({item.id for item in resp.output}) == 2
    events = _events(stack, model="fake-model", input="two ways", extra_body={"optillm_approach": "none|re2"})
    final = events[-1].response
    assert events[-1].type == "response.completed" and [i.type for i in final.output] == ["message", "message"]
    assert sum(e.type == "response.output_item.done" for e in events) == 2


def test_streamed_graph_approach(stack: Stack) -> None:
    events = _events(stack, model="moa-fake-model", input="graph stream")
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.output_text
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    assert final.model_extra["optigraph"]["approach"] == "moa" and final.usage.total_tokens > 0


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "fake-model"}, "input", "missing_required_parameter"),
        (
            {"model": "fake-model", "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0].type",
            "unsupported_parameter",
        ),
        (
            {"model": "fake-model", "input": [{"type": "item_reference", "id": "x"}]},
            "input[0].type",
            "unsupported_parameter",
        ),
        (
            {"model": "fake-model", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "unsupported_parameter",
        ),
        (
            {"model": "fake-model", "input": "x", "text": {"format": {"type": "xml"}}},
            "text.format.type",
            "invalid_value",
        ),
        ({"model": "fake-model", "input": "x", "background": True}, "background", "unsupported_parameter"),
        ({"model": "fake-model", "input": "x", "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "fake-model", "input": "x", "stream": "often"}, "stream", "invalid_value"),
        ({"model": "fake-model", "input": 12}, "input", "invalid_value"),
        ({"model": "fake-model", "input": "x", "max_output_tokens": 10**9}, "max_output_tokens", "invalid_value"),
        ({"model": "fake-model", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ],
)
def test_bad_requests_are_openai_400s(stack: Stack, body: dict[str, Any], param: str, code: str) -> None:
    with stack.http() as http:
        resp = http.post("/v1/responses", json=body, headers={"authorization": "Bearer k"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert stack.log.bodies == []


def test_body_that_is_not_json(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.post("/v1/responses", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


def test_raw_stream_frames_name_their_event(stack: Stack) -> None:
    """Each SSE frame is `event: <type>` then `data: {...}` with the same type, and no [DONE]."""
    with (
        stack.http() as http,
        http.stream("POST", "/v1/responses", json={"model": "fake-model", "input": "hi", "stream": True}) as resp,
    ):
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    pairs = list(zip(lines[::2], lines[1::2]))
    assert all(e.startswith("event: ") and d.startswith("data: ") for e, d in pairs)
    assert all(orjson.loads(d[6:])["type"] == e[7:] for e, d in pairs)
    assert "data: [DONE]" not in lines


def test_a_failed_response_reads_back_as_failed(stack: Stack) -> None:
    from upstream import HTTPFailure

    def refuse(body: dict[str, Any], index: int) -> Any:
        raise HTTPFailure(400, "no such thing")

    stack.script.fn = refuse
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="fake-model", input="fail please")
    run_id = err.value.response.headers["x-optigraph-run-id"]
    assert stack.run(run_id)["status"] == "failed"
    got = client.responses.retrieve("resp_" + run_id)
    assert got.status == "failed" and got.output == [] and "no such thing" in got.error.message
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="fake-model", input="x", previous_response_id="resp_" + run_id)
    assert err.value.body["code"] == "previous_response_not_completed"


@pytest.mark.parametrize("stream_first", [False, True])
def test_previous_response_of_a_graph_run(stack: Stack, stream_first: bool) -> None:
    client = stack.client()
    if stream_first:
        first = _events(stack, model="moa-fake-model", input="remember seven")[-1].response
    else:
        first = client.responses.create(model="moa-fake-model", input="remember seven")
    stack.reset()
    client.responses.create(model="fake-model", input="which number?", previous_response_id=first.id)
    assert stack.log.bodies[0]["messages"] == [
        {"role": "user", "content": "remember seven"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "which number?"},
    ]


def test_privacy_keeps_the_clients_text_out_of_the_stored_response(stack: Stack) -> None:
    """`privacy&none` through the Responses API: the client's answer has the originals, the upstream and
    every stored copy (the run's request, its kept Responses request, its answer) only placeholders."""
    email = "jane.roe@example.org"
    client = stack.client()
    resp = client.responses.create(
        model="privacy&none-fake-model",
        instructions=f"The user is {email}.",
        input=f"Repeat my address {email}.",
    )
    assert email in resp.output_text, "the client's copy is restored"
    assert email not in json.dumps(stack.log.bodies)
    run = stack.run(resp.id.removeprefix("resp_"))
    assert email not in json.dumps(run, default=str)
    again = client.responses.retrieve(resp.id)
    assert email not in again.model_dump_json()
