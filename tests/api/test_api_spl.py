"""The spl plugin through the real server with the official openai client: strategies learned from
answers (stored in the SQLite file), applied to later requests of the same type, rated, refined and
pruned; read and edited through /v1/spl/strategies; its cost as declared."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry

ARITHMETIC = "What is 17 times 23? End with: The answer is N."
OTHER_ARITHMETIC = "Compute 45 * 12 + 7."
STRATEGY = "Multiply the tens and the units separately, then add the parts."
REFINED = "Split each factor into tens and units, multiply every pair, add the partial products."


def responder(body: dict[str, Any], index: int) -> str:
    text = last_user_text(body)
    if text.startswith("You are improving how an assistant"):
        return f"Looks right.\nVERDICT: CORRECT\nSTRATEGY: {STRATEGY}"
    if "Rewrite the strategy" in text:
        return f"STRATEGY: {REFINED}"
    return "23 * 17 = 391. The answer is 391."


@pytest.fixture(scope="module")
def _spl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("spl") / "spl.db", default_model="fake-model") as s:
        yield s


@pytest.fixture
def stack(_spl_stack: Stack) -> Iterator[Stack]:
    """A server of its own (a fresh strategy table per test) answering with `responder`."""
    _spl_stack.reset()
    con = sqlite3.connect(_spl_stack.db_path, timeout=5)
    with con:
        con.execute("DELETE FROM spl_strategies")
    con.close()
    _spl_stack.script.fn = responder
    yield _spl_stack


def ask(stack: Stack, content: str = ARITHMETIC, **spl: Any) -> Any:
    return stack.client().chat.completions.create(
        model="spl-fake-model",
        messages=[{"role": "user", "content": content}],
        extra_body={"optillm_params": {"spl": spl}} if spl else None,
    )


def rows(stack: Stack) -> list[dict[str, Any]]:
    con = sqlite3.connect(stack.db_path, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM spl_strategies ORDER BY id")]
    finally:
        con.close()


def add_strategy(stack: Stack, text: str, *, uses: int = 0, successes: int = 0, kind: str = "arithmetic") -> int:
    con = sqlite3.connect(stack.db_path, timeout=5)
    with con:
        cur = con.execute(
            "INSERT INTO spl_strategies (problem_type, text, uses, successes, refinements, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            (kind, text, uses, successes),
        )
    con.close()
    return int(cur.lastrowid)


def run_text(stack: Stack, response: Any) -> str:
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    with stack.http() as http:
        return json.dumps(http.get(f"/v1/runs/{run_id}").json())


def declared_calls(**params: Any) -> int:
    spec = builtin_registry().get("spl")
    return evaluate(spec.calls, spec.validate_params(params))


def test_learning_creates_a_strategy_that_later_requests_of_the_type_get(stack: Stack) -> None:
    first = ask(stack, learning=True)
    assert first.choices[0].message.content == "23 * 17 = 391. The answer is 391."
    assert len(stack.log.bodies) == 2  # the answer, then the reflection
    assert stack.log.bodies[0]["messages"] == [{"role": "user", "content": ARITHMETIC}]  # nothing stored yet
    reflection = last_user_text(stack.log.bodies[1])
    assert ARITHMETIC in reflection and "The answer is 391." in reflection
    [stored] = rows(stack)
    assert (stored["problem_type"], stored["text"], stored["uses"], stored["tenant"]) == (
        "arithmetic",
        STRATEGY,
        0,
        None,
    )
    assert stored["source_run"] == first.model_extra["optigraph"]["run_id"]
    trace = run_text(stack, first)
    assert "spl.pre: type arithmetic" in trace and f"spl.post: created #{stored['id']}" in trace

    stack.reset()
    stack.script.fn = responder
    second = ask(stack, OTHER_ARITHMETIC)  # inference only: applies, never writes
    assert len(stack.log.bodies) == 1
    system = stack.log.bodies[0]["messages"][0]
    assert system["role"] == "system" and STRATEGY in system["content"]
    assert rows(stack)[0]["uses"] == 0
    assert f"applied #{stored['id']} of 1 stored; inference only" in run_text(stack, second)


def test_strategies_go_into_the_client_system_prompt_and_only_for_their_type(stack: Stack) -> None:
    add_strategy(stack, STRATEGY)
    add_strategy(stack, "Name the author first.", kind="factual")
    stack.client().chat.completions.create(
        model="spl-fake-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": ARITHMETIC}],
    )
    [system, user] = stack.log.bodies[0]["messages"]
    assert system["content"].startswith("Be brief.\n\nStrategies that have worked for arithmetic problems")
    assert STRATEGY in system["content"] and "author" not in system["content"]
    assert user == {"role": "user", "content": ARITHMETIC}


def test_with_an_empty_store_the_request_is_exactly_what_none_sends(stack: Stack) -> None:
    ask(stack)
    stack.client().chat.completions.create(model="none-fake-model", messages=[{"role": "user", "content": ARITHMETIC}])
    with_spl, plain = stack.log.bodies
    assert with_spl == plain


def test_uses_and_successes_follow_the_reference(stack: Stack) -> None:
    sid = add_strategy(stack, STRATEGY)
    ask(stack, learning=True, reference="391")
    ask(stack, learning=True, reference="392")
    strategy = next(r for r in rows(stack) if r["id"] == sid)
    assert (strategy["uses"], strategy["successes"]) == (2, 1)
    assert strategy["example"] == ARITHMETIC
    assert len(rows(stack)) == 1  # the reflection's strategy is the stored one: not added twice


def test_without_a_reference_the_model_verdict_decides(stack: Stack) -> None:
    sid = add_strategy(stack, STRATEGY)
    stack.script.fn = lambda body, i: (
        "VERDICT: INCORRECT\nSTRATEGY: " + STRATEGY if "VERDICT" in last_user_text(body) else "It is 400."
    )
    response = ask(stack, learning=True)
    assert rows(stack)[0]["id"] == sid and (rows(stack)[0]["uses"], rows(stack)[0]["successes"]) == (1, 0)
    assert "judged a failure by the model's verdict" in run_text(stack, response)


def test_a_strategy_is_refined_every_refine_every_uses_and_the_cost_is_as_declared(stack: Stack) -> None:
    sid = add_strategy(stack, STRATEGY, uses=2, successes=2)
    response = ask(stack, learning=True, refine_every=3)  # its third use: refined
    # none's one call and the plugin's own, every one of them made
    assert response.model_extra["optigraph"]["upstream_calls"] == 3 == 1 + declared_calls(learning=True, refine_every=3)
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)  # stored as finished: its calls are written
    assert [c["node"] for c in stack.calls(run_id)] == [
        "passthrough",
        "spl.reflect",
        "spl.refine",
    ]
    refine_prompt = last_user_text(stack.log.bodies[2])
    assert "helped in 3 of 3 uses" in refine_prompt and STRATEGY in refine_prompt
    strategy = next(r for r in rows(stack) if r["id"] == sid)
    assert (strategy["text"], strategy["refinements"], strategy["uses"]) == (REFINED, 1, 3)

    stack.reset()
    stack.script.fn = responder
    again = ask(stack, learning=True, refine_every=3)  # its fourth: not due
    assert again.model_extra["optigraph"]["upstream_calls"] == 2 < 1 + declared_calls(learning=True, refine_every=3)
    inference = ask(stack)
    assert inference.model_extra["optigraph"]["upstream_calls"] == 1 + declared_calls()  # none's one call + 0


def test_learning_prunes_each_type_to_its_limit(stack: Stack) -> None:
    worst = add_strategy(stack, "Guess.", uses=9, successes=1)
    kept = add_strategy(stack, "Estimate first, then compute exactly.", uses=9, successes=8)
    response = ask(stack, learning=True, max_per_type=2)  # the new strategy makes three
    ids = [r["id"] for r in rows(stack)]
    assert worst not in ids and kept in ids and len(ids) == 2
    assert f"pruned #{worst}" in run_text(stack, response)


def test_a_strategy_that_keeps_failing_is_no_longer_applied(stack: Stack) -> None:
    add_strategy(stack, "Guess.", uses=5, successes=1)
    good = "Estimate first, then compute exactly."
    add_strategy(stack, good, uses=5, successes=4)
    ask(stack)
    system = stack.log.bodies[0]["messages"][0]["content"]
    assert good in system and "Guess." not in system


def test_optillm_spl_learning_field_turns_learning_on_and_stays_home(stack: Stack) -> None:
    stack.client().chat.completions.create(
        model="spl-fake-model", messages=[{"role": "user", "content": ARITHMETIC}], extra_body={"spl_learning": True}
    )
    assert len(stack.log.bodies) == 2 and len(rows(stack)) == 1
    assert all("spl_learning" not in body for body in stack.log.bodies)


def test_streaming_passes_through_and_learning_still_happens(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="spl-fake-model",
        messages=[{"role": "user", "content": ARITHMETIC}],
        stream=True,
        extra_body={"optillm_params": {"spl": {"learning": True}}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "23 * 17 = 391. The answer is 391."
    assert len(rows(stack)) == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_strategies": -1}, "optillm_params.spl.max_strategies"),
        ({"refine_every": "often"}, "optillm_params.spl.refine_every"),
        ({"similarity": 0}, "optillm_params.spl.similarity"),
        ({"learn": True}, "optillm_params.spl.learn"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(stack: Stack, params: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(stack, **params)
    assert err.value.body["param"] == param and err.value.body["code"] == "invalid_approach_parameter"
    assert stack.log.bodies == []


def test_the_strategies_api_lists_shows_edits_and_deletes(stack: Stack) -> None:
    sid = add_strategy(stack, STRATEGY, uses=4, successes=3)
    add_strategy(stack, "Name the author first.", kind="factual")
    with stack.http(headers={"authorization": "Bearer k"}) as http:
        listed = http.get("/v1/spl/strategies").json()["data"]
        assert [s["problem_type"] for s in listed] == ["arithmetic", "factual"]
        assert http.get("/v1/spl/strategies", params={"problem_type": "factual"}).json()["data"][0]["text"] == (
            "Name the author first."
        )
        one = http.get(f"/v1/spl/strategies/{sid}").json()
        assert (one["uses"], one["successes"], one["success_rate"]) == (4, 3, round(4 / 6, 4))

        edited = http.patch(f"/v1/spl/strategies/{sid}", json={"text": "Check the units digit."}).json()
        assert edited["text"] == "Check the units digit." and edited["uses"] == 4
        ask(stack, OTHER_ARITHMETIC)
        assert "Check the units digit." in stack.log.bodies[-1]["messages"][0]["content"]  # the edit is used

        assert http.delete(f"/v1/spl/strategies/{sid}").json()["deleted"] is True
        missing = http.get(f"/v1/spl/strategies/{sid}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert http.delete(f"/v1/spl/strategies/{sid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"problem_type": "poetry"}, "problem_type"),
        ({"successes": 9}, "successes"),
        ({"text": ""}, "text"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_edit_is_a_400(stack: Stack, body: dict[str, Any], param: str) -> None:
    sid = add_strategy(stack, STRATEGY, uses=2, successes=1)
    with stack.http() as http:
        r = http.patch(f"/v1/spl/strategies/{sid}", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert rows(stack)[0]["text"] == STRATEGY
