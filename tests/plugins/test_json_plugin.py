"""json: answers validated against response_format's schema, repaired once, or a clear error."""

from __future__ import annotations

import json

import pytest
from engine_stack import ask, make_runner
from scripted import ScriptedBackend, replies

from optigraph.plugins.json_output import InvalidModelOutput, check, parse_json

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "stops": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "minutes": {"type": "integer"}},
                "required": ["name", "minutes"],
            },
        },
    },
    "required": ["city", "stops"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}}
VALID = {"city": "Lyon", "stops": [{"name": "Fourviere", "minutes": 40}]}


def test_json_is_found_in_fences_and_prose() -> None:
    assert parse_json('Here:\n```json\n{"a": 1}\n```\nDone.') == {"a": 1}
    assert parse_json('The answer is {"a": [1, 2]} as requested.') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        parse_json("no json here")


def test_schema_errors_name_the_place() -> None:
    _, error = check('{"city": "Lyon", "stops": [{"name": "x", "minutes": "ten"}]}', SCHEMA)
    assert error is not None and "stops/0/minutes" in error


async def test_an_invalid_answer_is_repaired_once_and_validates() -> None:
    backend = ScriptedBackend(
        replies('Sure! {"city": "Lyon", "stops": [{"name": "Fourviere"}]}', "```json\n" + json.dumps(VALID) + "\n```")
    )
    response = await ask(
        make_runner(backend),
        {"model": "json&none-m", "response_format": FORMAT, "messages": [{"role": "user", "content": "Plan a trip."}]},
    )
    assert json.loads(response["choices"][0]["message"]["content"]) == VALID
    assert len(backend.calls) == 2
    repair = backend.calls[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": 'Sure! {"city": "Lyon", "stops": [{"name": "Fourviere"}]}'}
    assert "minutes" in repair[-1]["content"] and "required" in repair[-1]["content"]
    assert response["optigraph"]["upstream_calls"] == 2


async def test_a_valid_answer_costs_no_extra_call() -> None:
    backend = ScriptedBackend(lambda body: json.dumps(VALID))
    response = await ask(
        make_runner(backend),
        {"model": "json&none-m", "response_format": FORMAT, "messages": [{"role": "user", "content": "Plan a trip."}]},
    )
    assert json.loads(response["choices"][0]["message"]["content"]) == VALID
    assert len(backend.calls) == 1


async def test_an_answer_that_stays_invalid_is_an_error_not_a_bad_answer() -> None:
    backend = ScriptedBackend(lambda body: "I cannot do JSON.")
    runner = make_runner(backend)
    with pytest.raises(InvalidModelOutput) as info:
        await ask(
            runner,
            {
                "model": "json&none-m",
                "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "Plan a trip."}],
            },
        )
    assert info.value.status == 502 and info.value.code == "invalid_model_output"
    assert len(backend.calls) == 2  # the answer and one repair


async def test_without_response_format_answers_pass_through() -> None:
    backend = ScriptedBackend(lambda body: "plain text")
    response = await ask(
        make_runner(backend), {"model": "json&none-m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response["choices"][0]["message"]["content"] == "plain text"


async def test_on_a_backend_without_structured_output_the_format_is_asked_for_in_words() -> None:
    backend = ScriptedBackend(
        replies("not json", json.dumps(VALID)), capabilities={"local": True, "structured_output": False}
    )
    response = await ask(
        make_runner(backend),
        {"model": "json&none-m", "response_format": FORMAT, "messages": [{"role": "user", "content": "Plan a trip."}]},
    )
    assert json.loads(response["choices"][0]["message"]["content"]) == VALID
    assert all("response_format" not in call for call in backend.calls)  # the local model would refuse it
    system = backend.calls[0]["messages"][0]
    assert system["role"] == "system" and '"stops"' in system["content"]
    assert len(backend.calls) == 2  # the invalid answer was repaired


async def test_on_the_local_model_the_format_is_sent_and_also_asked_for_in_words() -> None:
    """The local model constrains its output to the schema (optigraph/local/grammar.py): the format goes
    to every sampling call, and the schema is in a system message too."""
    backend = ScriptedBackend(replies(json.dumps(VALID)), capabilities={"local": True})
    response = await ask(
        make_runner(backend),
        {"model": "json&none-m", "response_format": FORMAT, "messages": [{"role": "user", "content": "Plan a trip."}]},
    )
    assert json.loads(response["choices"][0]["message"]["content"]) == VALID
    assert [call["response_format"] for call in backend.calls] == [FORMAT]
    assert (
        backend.calls[0]["messages"][0]["role"] == "system" and '"stops"' in backend.calls[0]["messages"][0]["content"]
    )


async def test_response_format_is_refused_on_a_local_model_without_constrained_decoding() -> None:
    from optigraph.errors import InvalidRequest

    runner = make_runner(ScriptedBackend(capabilities={"local": True, "structured_output": False}))
    with pytest.raises(InvalidRequest) as info:
        await runner.prepare(
            {"model": "re2-m", "response_format": FORMAT, "messages": [{"role": "user", "content": "q"}]},
            client_key=None,
        )
    assert info.value.param == "response_format"
