"""The decoding strategies through the real server on the tiny model: as approaches (`cot_decoding-<model>`,
composed with others) and as `decoding` in the body of a plain request, streaming included."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tiny_model import TinyModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread  # noqa: E402

QUESTION = [{"role": "user", "content": "What is two plus two?"}]
# small settings so that each strategy finishes in well under a second on the tiny model
SMALL: dict[str, dict[str, Any]] = {
    "cot_decoding": {"k": 3, "max_tokens": 6},
    "entropy_decoding": {"max_tokens": 6},
    "thinkdeeper": {"max_tokens": 12},
    "deepconf": {"warmup_samples": 2, "max_traces": 3, "max_tokens_per_trace": 6, "min_trace_length": 2},
    "autothink": {"max_tokens": 12},
}


@pytest.mark.parametrize("strategy", sorted(SMALL))
def test_each_strategy_is_an_approach(client: openai.OpenAI, server: ServerThread, strategy: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=strategy, messages=QUESTION, seed=3, extra_body={"optillm_params": {strategy: SMALL[strategy]}}
    )
    reply = raw.parse()
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    assert reply.model_extra["optigraph"]["approach"] == strategy
    run = httpx.get(f"{server.url}/v1/runs/{raw.headers['x-optigraph-run-id']}").json()
    assert run["status"] == "completed"
    call = run["upstream_calls"][0]
    assert call["parameters"]["decoding"] == strategy  # the strategy's parameters went to the local model
    for key, value in SMALL[strategy].items():
        assert call["parameters"][key] == value


def test_strategy_parameters_are_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="cot_decoding", messages=QUESTION, extra_body={"optillm_params": {"cot_decoding": {"k": 0}}}
        )
    assert "k" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="cot_decoding", messages=QUESTION, extra_body={"optillm_params": {"cot_decoding": {"beams": 2}}}
        )
    assert err.value.body["code"] == "invalid_approach_parameter"


def test_a_strategy_composes_with_a_prompt_approach(client: openai.OpenAI, server: ServerThread) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="re2&cot_decoding",
        messages=QUESTION,
        extra_body={"optillm_params": {"cot_decoding": {"k": 2, "max_tokens": 4}}},
    )
    assert raw.parse().model_extra["optigraph"]["upstream_calls"] == 2
    run = httpx.get(f"{server.url}/v1/runs/{raw.headers['x-optigraph-run-id']}").json()
    assert [c["parameters"].get("decoding") for c in run["upstream_calls"]].count("cot_decoding") == 1


def test_decoding_in_the_body_reports_its_details(client: openai.OpenAI, tiny: TinyModel) -> None:
    reply = client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, extra_body={"decoding": "cot_decoding", "k": 3, "max_tokens": 5}
    )
    details = reply.model_extra["optigraph"]["decoding"]
    assert details["strategy"] == "cot_decoding" and len(details["paths"]) == 3
    assert reply.choices[0].message.content == details["paths"][details["chosen"]]["text"]
    assert reply.usage.completion_tokens == sum(p["tokens"] for p in details["paths"])


def test_a_streaming_strategy_streams_tokens(client: openai.OpenAI, tiny: TinyModel) -> None:
    body = {"decoding": "entropy_decoding", "max_tokens": 12}
    whole = client.chat.completions.create(model=str(tiny.path), messages=QUESTION, seed=5, extra_body=body)
    chunks = list(
        client.chat.completions.create(
            model=str(tiny.path),
            messages=QUESTION,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=body,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].model_extra["optigraph"]["decoding"]["strategy"] == "entropy_decoding"


def test_decoding_refuses_what_it_cannot_do(client: openai.OpenAI, tiny: TinyModel) -> None:
    for extra in (
        {"decoding": "cot_decoding", "n": 2},
        {"decoding": "deepconf", "logprobs": True},
        {"decoding": "nope"},
        {"decoding": "cot_decoding", "k": "many"},
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=str(tiny.path), messages=QUESTION, extra_body=extra)
