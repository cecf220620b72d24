"""Chat completions through the passthrough approach (`none`) with the official openai client:
response shape, usage, run identification, what reaches the upstream, parameter normalisation."""

from __future__ import annotations

import asyncio

import pytest
from api_stack import Stack, fake_usage

HELLO = [{"role": "user", "content": "hello there"}]


def check_completion(r, *, model: str = "fake-model", content: str = "echo: hello there") -> None:
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert isinstance(r.created, int) and r.created > 1_600_000_000
    assert r.model == model
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == content
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None


def test_sync_completion_shape_usage_and_run(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="fake-model", messages=HELLO)
    r = raw.parse()
    check_completion(r)
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 3 and r.usage.total_tokens == 5
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    ext = r.model_extra["optigraph"]
    assert ext == {"run_id": raw.headers["x-optigraph-run-id"], "approach": "none", "upstream_calls": 1}
    assert r.id == f"chatcmpl-{ext['run_id']}"
    assert raw.headers["x-optigraph-upstream-calls"] == "1"
    assert len(stack.log.bodies) == 1

    run = stack.run(ext["run_id"])
    assert run["status"] == "completed" and run["expression"] == "none" and run["model"] == "fake-model"
    assert (run["prompt_tokens"], run["completion_tokens"], run["reasoning_tokens"], run["calls"]) == (2, 3, 3, 1)


async def test_async_completion(stack: Stack) -> None:
    async with stack.aclient() as client:
        r = await client.chat.completions.create(model="fake-model", messages=HELLO)
    check_completion(r)
    assert r.model_extra["optigraph"]["upstream_calls"] == 1


async def test_async_concurrent_requests_are_independent(stack: Stack) -> None:
    """Per-request settings never leak: each upstream body matches its own request."""
    async with stack.aclient() as client:

        async def one(i: int):
            model = "o3-mini" if i % 2 else "fake-model"
            return model, await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"request {i}"}], temperature=0.5, max_tokens=10 + i
            )

        results = await asyncio.gather(*(one(i) for i in range(16)))
    assert len({r.model_extra["optigraph"]["run_id"] for _, r in results}) == 16
    for i, (model, r) in enumerate(results):
        assert r.model == model and r.choices[0].message.content == f"echo: request {i}"
    by_text = {b["messages"][0]["content"]: b for b in stack.log.bodies}
    for i in range(16):
        body = by_text[f"request {i}"]
        if i % 2:
            assert body["model"] == "o3-mini" and "temperature" not in body
            assert body["max_completion_tokens"] == 10 + i and "max_tokens" not in body
        else:
            assert body["model"] == "fake-model" and body["temperature"] == 0.5 and body["max_tokens"] == 10 + i


def test_unknown_fields_reach_upstream_and_control_fields_do_not(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model="fake-model",
        messages=HELLO,
        seed=5,
        stop=["\n\n"],
        user="u-1",
        top_p=0.5,
        response_format={"type": "text"},
        logprobs=True,
        top_logprobs=2,
        extra_body={
            "my_vendor_field": 1,
            "vendor_options": {"a": [1, 2]},
            "optillm_approach": "none",
            "optillm_params": {},
        },
    )
    check_completion(r)
    (body,) = stack.log.bodies
    assert body["my_vendor_field"] == 1 and body["vendor_options"] == {"a": [1, 2]}
    assert body["seed"] == 5 and body["stop"] == ["\n\n"] and body["user"] == "u-1" and body["top_p"] == 0.5
    assert body["response_format"] == {"type": "text"} and body["logprobs"] is True and body["top_logprobs"] == 2
    assert not [k for k in body if k.startswith("optillm")]
    assert body["messages"] == HELLO


def test_other_optillm_fields_do_not_reach_upstream(stack: Stack) -> None:
    stack.client().chat.completions.create(
        model="fake-model", messages=HELLO, extra_body={"optillm_base_model": "x", "optillm_whatever": True}
    )
    assert not [k for k in stack.log.bodies[0] if k.startswith("optillm")]


def test_model_prefix_is_removed(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model="none-fake-model", messages=HELLO)
    check_completion(r)
    assert stack.log.bodies[0]["model"] == "fake-model"
    assert r.model_extra["optigraph"]["approach"] == "none"


def test_approach_only_model_uses_the_default_model(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model="none", messages=HELLO)
    check_completion(r, model=stack.settings.default_model)
    assert stack.log.bodies[0]["model"] == stack.settings.default_model


def test_approach_tag_is_removed_before_upstream(stack: Stack) -> None:
    messages = [
        {"role": "system", "content": "<optillm_approach>none|none</optillm_approach>\nBe brief."},
        {"role": "user", "content": "hello there"},
    ]
    r = stack.client().chat.completions.create(model="fake-model", messages=messages)
    assert r.model_extra["optigraph"]["approach"] == "none|none"
    assert [c.message.content for c in r.choices] == ["echo: hello there"] * 2
    assert len(stack.log.bodies) == 2
    for body in stack.log.bodies:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert "optillm" not in str(body)


def test_multipart_content(stack: Stack) -> None:
    content = [
        {"type": "text", "text": "hello "},
        {"type": "text", "text": "<optillm_approach>none</optillm_approach>world"},
    ]
    r = stack.client().chat.completions.create(model="fake-model", messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content == "echo: hello world"
    assert r.model_extra["optigraph"]["approach"] == "none"
    sent = stack.log.bodies[0]["messages"][0]["content"]
    assert sent == [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]


def test_tools_and_tool_calls(stack: Stack) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    stack.script.fn = lambda body, i: {"content": None, "tool_calls": [call]}
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    r = stack.client().chat.completions.create(model="fake-model", messages=HELLO, tools=tools, tool_choice="auto")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [tc.model_dump() for tc in choice.message.tool_calls] == [call]
    assert stack.log.bodies[0]["tools"] == tools and stack.log.bodies[0]["tool_choice"] == "auto"


# ---- parameter normalisation -----------------------------------------------------------------


def test_reasoning_model_gets_max_completion_tokens_and_no_temperature(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model="o3-mini", messages=HELLO, max_tokens=64, temperature=0.3, top_p=0.9
    )
    assert r.model == "o3-mini"
    (body,) = stack.log.bodies
    assert body["model"] == "o3-mini"
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body


def test_reasoning_model_normalised_in_every_call_of_a_composite(stack: Stack) -> None:
    stack.client().chat.completions.create(model="none|none-o3-mini", messages=HELLO, max_tokens=64, temperature=0.3)
    assert len(stack.log.bodies) == 2
    for body in stack.log.bodies:
        assert body["model"] == "o3-mini" and body["max_completion_tokens"] == 64
        assert "max_tokens" not in body and "temperature" not in body


def test_o1_mini_system_message_becomes_developer(stack: Stack) -> None:
    stack.client().chat.completions.create(
        model="o1-mini", messages=[{"role": "system", "content": "Be brief."}, *HELLO]
    )
    assert [m["role"] for m in stack.log.bodies[0]["messages"]] == ["developer", "user"]


def test_plain_model_gets_one_max_tokens_field(stack: Stack) -> None:
    stack.client().chat.completions.create(
        model="fake-model", messages=HELLO, max_completion_tokens=20, temperature=0.3
    )
    (body,) = stack.log.bodies
    limits = [body[k] for k in ("max_tokens", "max_completion_tokens") if k in body]
    assert limits == [20]
    assert body["temperature"] == 0.3


@pytest.mark.parametrize("model", ["fake-model", "none|none-fake-model"])
def test_usage_matches_what_the_upstream_reported(stack: Stack, model: str) -> None:
    r = stack.client().chat.completions.create(model=model, messages=HELLO)
    expected = fake_usage(stack.log.bodies)
    assert r.usage.model_dump(include=set(expected)) == expected
    assert r.usage.completion_tokens_details.reasoning_tokens == 3 * len(stack.log.bodies)
