"""Constrained decoding on the tiny random-weight model: whatever its weights say, every answer that ends
on its own is JSON matching the request's schema, sampled or greedy, n choices, streamed or not."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from tiny_model import TinyModel

from optigraph.backends.local import parse_request
from optigraph.errors import InvalidRequest
from optigraph.local.grammar import schema_of, token_bytes

# Bounded everywhere (booleans, enums, maxItems), so a random model finishes well within max_tokens.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "inner": {
            "type": "object",
            "properties": {
                "flag": {"type": "boolean"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            },
            "required": ["flag", "tags"],
            "additionalProperties": False,
        },
    },
    "required": ["ok", "kind", "inner"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}}
QUESTION = [{"role": "user", "content": "Describe a pet."}]


def test_vocabulary_pieces_become_their_bytes() -> None:
    assert token_bytes("Ġcat") == b" cat"  # byte-level BPE: Ġ is the space byte
    assert token_bytes("âĢĻ") == "\u2019".encode()  # three bytes of one character
    assert token_bytes("<0x0A>") == b"\n"  # a SentencePiece byte piece
    assert token_bytes("\u2581dog") == b" dog"  # a SentencePiece word piece


def test_response_format_is_read_and_checked() -> None:
    assert schema_of(None) == (False, None)
    assert schema_of({"type": "text"}) == (False, None)
    assert schema_of({"type": "json_object"}) == (True, None)
    assert schema_of(FORMAT) == (True, SCHEMA)
    for bad in ("json", {"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "yaml"}):
        with pytest.raises(InvalidRequest) as caught:
            schema_of(bad)
        assert caught.value.param == "response_format"


def test_a_decoding_strategy_cannot_be_constrained() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request({"messages": QUESTION, "decoding": "cot_decoding", "response_format": FORMAT})
    assert caught.value.param == "response_format"


async def test_every_sampled_choice_matches_the_schema(tiny_backend: Any) -> None:
    body = {
        "model": "local",
        "messages": QUESTION,
        "n": 6,
        "temperature": 1.5,  # a random model at a high temperature: anything could come out unconstrained
        "seed": 7,
        "max_tokens": 120,
        "response_format": FORMAT,
    }
    reply = await tiny_backend.complete(body)
    assert len(reply["choices"]) == 6
    values = []
    for choice in reply["choices"]:
        assert choice["finish_reason"] == "stop"
        value = json.loads(choice["message"]["content"])
        jsonschema.validate(value, SCHEMA)
        values.append(json.dumps(value, sort_keys=True))
    assert len(set(values)) > 1, "the constraint narrows the choices, it does not fix the answer"
    unconstrained = await tiny_backend.complete({**body, "response_format": None})
    assert not all(_is_json(c["message"]["content"]) for c in unconstrained["choices"]), "the model alone is random"


async def test_json_object_gives_an_object_and_greedy_works_too(tiny_backend: Any) -> None:
    reply = await tiny_backend.complete(
        {
            "model": "local",
            "messages": QUESTION,
            "temperature": 0,
            "max_tokens": 200,
            "response_format": {"type": "json_object"},
        }
    )
    choice = reply["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # an unbounded string or number may run into max_tokens: still a prefix of an object
        assert choice["message"]["content"].startswith("{")


async def test_compiled_schemas_are_kept_per_model(tiny_backend: Any) -> None:
    body = {"model": "local", "messages": QUESTION, "max_tokens": 80, "seed": 1, "response_format": FORMAT}
    await tiny_backend.complete(body)
    grammars = await tiny_backend.run(lambda lm: dict(lm.grammars))
    await tiny_backend.complete({**body, "seed": 2})
    again = await tiny_backend.run(lambda lm: dict(lm.grammars))
    key = json.dumps(SCHEMA, sort_keys=True)
    assert again[key] is grammars[key], "the second request reused the compiled index"


def test_over_http_streamed_and_not(client: openai.OpenAI, tiny: TinyModel) -> None:
    args: dict[str, Any] = {
        "model": "local",
        "messages": QUESTION,
        "max_tokens": 120,
        "seed": 11,
        "temperature": 1.2,
        "response_format": FORMAT,
    }
    whole = client.chat.completions.create(**args)
    jsonschema.validate(json.loads(whole.choices[0].message.content), SCHEMA)
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**args, stream=True)
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole.choices[0].message.content, "the same seed, the same constrained answer"


def test_a_schema_it_cannot_express_is_a_400(client: openai.OpenAI) -> None:
    unsupported = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="local", messages=QUESTION, max_tokens=4, response_format=unsupported)
    assert caught.value.body["param"] == "response_format"
    assert caught.value.body["code"] == "unsupported_schema"


def test_an_approach_passes_the_format_to_its_sampling_calls(client: openai.OpenAI) -> None:
    """`json&bon`: bon's candidates are constrained (its rating calls are not: they carry no format),
    and the json plugin checks the pick."""
    reply = client.chat.completions.create(
        model="json&bon-local",
        messages=QUESTION,
        max_tokens=120,
        seed=3,
        response_format=FORMAT,
        extra_body={"optillm_params": {"bon": {"n": 2}}},
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
