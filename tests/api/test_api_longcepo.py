"""longcepo end to end with the official openai client: a document over ten times the upstream's
window (the fake upstream refuses any longer prompt with a 400, as a real server does) answered from
the fact in its middle; its parameters checked like an approach's."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry
from optigraph.plugins.retrieval import estimate_tokens

WINDOW = 1000
FACT = "The lighthouse keeper's name is Ingrid Halvorsen."
WORDS = ["tide", "rope", "gull", "salt", "mast", "reef", "fog", "lamp", "deck", "wave"]


def document(tokens: int) -> str:
    rng = random.Random(11)
    words: list[str] = []
    while estimate_tokens(" ".join(words)) < tokens:
        words.append(rng.choice(WORDS))
    middle = len(words) // 2
    return " ".join(words[:middle] + [FACT] + words[middle:])


def model(body: dict[str, Any], index: int) -> Any:
    used = sum(estimate_tokens(str(m.get("content") or "")) for m in body["messages"])
    used += int(body.get("max_tokens") or 0)
    if used > WINDOW:
        return HTTPFailure(400, f"this model's maximum context length is {WINDOW} tokens; you asked for {used}")
    prompt = last_user_text(body)
    if prompt.startswith("You will answer a question"):
        return "Who keeps the lighthouse?"
    if prompt.startswith("This is part"):
        return FACT if FACT in prompt else "NOTHING"
    if prompt.startswith("Notes taken from a long document"):
        return "Ingrid Halvorsen" if "Ingrid Halvorsen" in prompt else "unknown"
    return "unexpected"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("db") / "l.db", default_model="fake-model") as s:
        yield s


def ask(stack: Stack, params: dict[str, Any], **kw: Any) -> Any:
    return stack.client().chat.completions.create(
        model="longcepo&none-fake-model",
        messages=[{"role": "user", "content": document(11 * WINDOW) + "\n\nWho keeps the lighthouse?"}],
        extra_body={"optillm_params": {"longcepo": params}},
        **kw,
    )


def test_a_document_eleven_windows_long_is_answered_within_the_window(stack: Stack) -> None:
    stack.reset()
    stack.script.fn = model
    params = {"window_tokens": WINDOW, "answer_tokens": 100, "concurrency": 4}
    response = ask(stack, params)
    assert response.choices[0].message.content == "Ingrid Halvorsen"
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    calls = stack.calls(run_id)
    assert all(c["status"] == "ok" for c in calls)  # no prompt went over the window
    nodes = [c["node"] for c in calls]
    chunks = nodes.count("longcepo.map")
    assert nodes[0] == "longcepo.plan" and nodes[-1] == "passthrough" and chunks >= 11
    spec = builtin_registry().get("longcepo")
    assert len(calls) - 1 <= evaluate(spec.calls, spec.validate_params(params))
    assert response.model_extra["optigraph"]["upstream_calls"] == len(calls) == chunks + 2
    with stack.http() as http:
        detail = http.get(f"/v1/runs/{run_id}").json()
    assert f"longcepo: {chunks} chunks" in str(detail) and "1 with relevant notes" in str(detail)


def test_without_longcepo_the_upstream_refuses_the_document(stack: Stack) -> None:
    stack.reset()
    stack.script.fn = model
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model="none-fake-model", messages=[{"role": "user", "content": document(11 * WINDOW)}]
        )
    assert "maximum context length" in caught.value.body["message"]


@pytest.mark.parametrize(
    "params", [{"window_tokens": 10}, {"concurrency": 0}, {"answer_tokens": 600, "window_tokens": 1000}, {"x": 1}]
)
def test_bad_parameters_are_a_400(stack: Stack, params: dict[str, Any]) -> None:
    stack.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        ask(stack, params)
    assert caught.value.body["code"] == "invalid_approach_parameter" and stack.log.bodies == []


def test_a_document_over_max_chunks_is_a_400_before_any_call(stack: Stack) -> None:
    stack.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        ask(stack, {"window_tokens": WINDOW, "answer_tokens": 100, "max_chunks": 4})
    assert caught.value.body["code"] == "context_length_exceeded" and stack.log.bodies == []
