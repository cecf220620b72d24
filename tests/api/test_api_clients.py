"""Clients beyond the openai SDK, unchanged, against a real optigraph server on loopback: LangChain's
ChatOpenAI (invoke, stream, tool calling, structured output, and its Responses API mode) and LiteLLM
as a client (`openai/<model>` with api_base), streaming too."""

from __future__ import annotations

import json
import os
from typing import Any

import langchain_openai
from api_stack import Stack
from pydantic import BaseModel, Field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM reads its price list from the package

HELLO = "hello there"


def chat_model(stack: Stack, model: str = "fake-model", **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(model=model, base_url=stack.base_url, api_key="client-key", max_retries=0, **kw)


def test_langchain_invoke_and_stream(stack: Stack) -> None:
    llm = chat_model(stack)
    reply = llm.invoke(HELLO)
    assert reply.content == "echo: hello there"
    assert reply.usage_metadata["input_tokens"] == 2 and reply.usage_metadata["output_tokens"] == 3
    pieces = [chunk.content for chunk in llm.stream(HELLO) if chunk.content]
    assert pieces == ["echo:", " hello", " there"]
    moa = chat_model(stack, model="moa-fake-model").invoke(HELLO)
    assert moa.response_metadata["model_name"] == "fake-model" and moa.content


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(description="the city")


def test_langchain_tool_calling(stack: Stack) -> None:
    def call_tool(body: dict[str, Any], index: int) -> Any:
        assert body["tools"][0]["function"]["name"] == "Weather"
        arguments = json.dumps({"city": "Paris"})
        return {
            "content": None,
            "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "Weather", "arguments": arguments}}
            ],
        }

    stack.script.fn = call_tool
    reply = chat_model(stack).bind_tools([Weather]).invoke("weather in Paris?")
    assert reply.tool_calls == [{"name": "Weather", "args": {"city": "Paris"}, "id": "call_9", "type": "tool_call"}]


class Person(BaseModel):
    name: str
    age: int


def test_langchain_structured_output(stack: Stack) -> None:
    stack.script.fn = lambda body, index: '{"name": "Ann", "age": 31}'
    person = chat_model(stack).with_structured_output(Person).invoke("who?")
    assert person == Person(name="Ann", age=31)
    fmt = stack.log.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Person"


def test_langchain_through_the_responses_api(stack: Stack) -> None:
    llm = chat_model(stack, use_responses_api=True)
    reply = llm.invoke(HELLO)
    assert reply.text == "echo: hello there"
    run = stack.run(reply.response_metadata["id"].removeprefix("resp_"))  # served as a response
    assert run["request"]["optigraph_responses"]["input"][0]["content"] == HELLO
    assert "".join(c.text for c in llm.stream(HELLO)) == "echo: hello there"
    stack.script.fn = lambda body, index: '{"name": "Bo", "age": 7}'
    assert llm.with_structured_output(Person).invoke("who?") == Person(name="Bo", age=7)


def test_litellm_as_a_client(stack: Stack) -> None:
    import litellm

    kw = {"model": "openai/fake-model", "api_base": stack.base_url, "api_key": "client-key"}
    reply = litellm.completion(messages=[{"role": "user", "content": HELLO}], **kw)
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.usage.total_tokens == 5
    stream = litellm.completion(messages=[{"role": "user", "content": HELLO}], stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "echo: hello there"
    assert all(b["model"] == "fake-model" for b in stack.log.bodies)
    prefixed = litellm.completion(
        messages=[{"role": "user", "content": HELLO}], **{**kw, "model": "openai/moa-fake-model"}
    )
    assert prefixed.choices[0].message.content and len(stack.log.bodies) > 3  # moa made several calls
