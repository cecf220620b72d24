"""The router plugin (and `auto`, its OptILLM name) through the real server with the official openai
client: the approach chosen from the prompt by the local classifier runs, the choice and its
confidence are recorded in the run, the fallback runs below the threshold, bad parameters are 400s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry

FACTUAL = "Who wrote the novel War and Peace?"
WRITING = "Write a short poem about the autumn sea."


@pytest.fixture
def plain(stack: Stack) -> Iterator[Stack]:
    """The shared server, answering every call with one fixed sentence."""
    stack.script.fn = lambda body, index: "Leo Tolstoy wrote it."
    yield stack


def ask(stack: Stack, content: str, model: str = "router-fake-model", **router: Any) -> Any:
    return stack.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        extra_body={"optillm_params": {model.split("-")[0].split("&")[0]: router}} if router else None,
    )


def decisions(stack: Stack, response: Any) -> list[dict[str, Any]]:
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    with stack.http() as http:
        return http.get(f"/v1/runs/{run_id}").json()["threads"][0]["decisions"]


def default_calls(name: str) -> int:
    spec = builtin_registry().get(name)
    return evaluate(spec.calls, spec.validate_params({}))


def test_a_factual_question_is_routed_to_none(plain: Stack) -> None:
    response = ask(plain, FACTUAL)
    assert response.choices[0].message.content == "Leo Tolstoy wrote it."
    assert plain.log.bodies[0]["messages"] == [{"role": "user", "content": FACTUAL}]
    [decision] = decisions(plain, response)
    assert decision["plugin"] == "router" and decision["route"] == "none"
    assert decision["reason"].startswith("router: factual (0.")


def test_open_writing_is_routed_to_moa_at_moa_cost(plain: Stack) -> None:
    response = ask(plain, WRITING)
    assert decisions(plain, response)[0]["route"] == "moa"
    # the router makes no call of its own: the run costs what moa declares
    assert response.model_extra["optigraph"]["upstream_calls"] == len(plain.log.bodies) == default_calls("moa")
    assert default_calls("router") == 0


def test_below_the_threshold_the_fallback_runs(plain: Stack) -> None:
    response = ask(plain, FACTUAL, threshold=1.0, fallback="re2")
    assert "Read the question again" in last_user_text(plain.log.bodies[0])
    [decision] = decisions(plain, response)
    assert decision["route"] == "re2" and "below the threshold 1.0 -> fallback re2" in decision["reason"]


def test_below_the_threshold_without_a_fallback_what_it_wraps_runs(plain: Stack) -> None:
    response = ask(plain, FACTUAL, model="router&re2-fake-model", threshold=1.0)
    assert "Read the question again" in last_user_text(plain.log.bodies[0])
    assert decisions(plain, response) == []  # nothing was rerouted
    assert response.model_extra["optigraph"]["approach"] == "router&re2"


def test_routes_can_be_replaced_per_type(plain: Stack) -> None:
    response = ask(plain, FACTUAL, routes={"factual": "re2"})
    assert decisions(plain, response)[0]["route"] == "re2"
    assert "Read the question again" in last_user_text(plain.log.bodies[0])


def test_auto_is_the_router(plain: Stack) -> None:
    response = ask(plain, FACTUAL, model="auto-fake-model")
    assert response.model_extra["optigraph"]["approach"] == "auto&none"
    [decision] = decisions(plain, response)
    assert decision["plugin"] == "auto" and decision["route"] == "none"
    body = plain.client().chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": WRITING}], extra_body={"optillm_approach": "auto"}
    )
    assert decisions(plain, body)[0]["route"] == "moa"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"threshold": 1.5}, "optillm_params.router.threshold"),
        ({"routes": {"poetry": "moa"}}, "optillm_params.router.routes"),
        ({"routes": {"factual": ""}}, "optillm_params.router.routes"),
        ({"fallback": ""}, "optillm_params.router.fallback"),
        ({"default": "none"}, "optillm_params.router.default"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(plain: Stack, params: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(plain, FACTUAL, **params)
    assert err.value.body["param"] == param and err.value.body["code"] == "invalid_approach_parameter"
    assert plain.log.bodies == []


def test_a_route_to_an_unknown_approach_is_a_400(plain: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(plain, FACTUAL, routes={"factual": "nosuch"})
    assert err.value.body["code"] == "invalid_route" and "nosuch" in err.value.body["message"]
    assert plain.log.bodies == []


def test_a_server_whose_default_is_auto_routes_plain_model_names(tmp_path: Path) -> None:
    with start_stack(tmp_path / "auto.db", default_model="fake-model", approach="auto") as stack:
        stack.script.fn = lambda body, index: "Tolstoy."
        response = stack.client().chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": WRITING}]
        )
        assert response.model_extra["optigraph"]["approach"] == "auto&none"
        assert decisions(stack, response)[0]["route"] == "moa"
        assert len(stack.log.bodies) == default_calls("moa")
