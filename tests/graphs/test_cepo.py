import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.cepo import SPEC  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402
from optigraph.nodes.rate import RATING_REQUEST  # noqa: E402

QUESTION = [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "What is 17 + 25?"}]
SMALL = {"bestofn_n": 2, "planning_m": 2, "planning_n": 1}


def step(body):
    prompt = last_user(body)
    if prompt.startswith("Write a concise step-by-step plan"):
        return "plan"
    if prompt.startswith("Now carry out your plan"):
        return "execute"
    if "attempted solutions" in prompt or prompt.endswith("write a complete solution."):
        return "refine"
    if "A reviewed solution" in prompt:
        return "answer"
    if prompt == RATING_REQUEST:
        return "rate"
    if "Which response answers the query better?" in prompt:
        return "pair"
    return "unknown"


def scripted(**overrides):
    """Default replies by step; an override is a reply or a function of the body."""
    replies = {
        "plan": "1. add tens (high) 2. add ones (high)",
        "execute": "17 + 25 = 42",
        "refine": "Reviewed: 42",
        "answer": "The answer is 42.",
        "rate": "7",
        "pair": "[[1]]",
        **overrides,
    }

    def respond(body):
        reply = replies[step(body)]
        return reply(body) if callable(reply) else reply

    return respond


def calls_by_step(backend):
    out = {}
    for b in backend.calls:
        out.setdefault(step(b), []).append(b)
    return out


async def test_chain_structure_step_settings_and_call_count():
    backend = ScriptedBackend(scripted())
    params = {**SMALL, "planning_max_tokens_step2": 900}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    by = calls_by_step(backend)
    # the first attempt of each chain is accepted, so its second is never made
    assert {k: len(v) for k, v in by.items()} == {"plan": 2, "execute": 2, "refine": 2, "answer": 2, "rate": 2}
    assert len(backend.calls) == evaluate(SPEC.expected_calls, SPEC.validate_params(params)) == 10
    # each step at its own temperature (the per-step settings are applied, not step 1's)
    assert {b["temperature"] for b in by["plan"]} == {0.55}
    assert {b["temperature"] for b in by["execute"]} == {0.25}
    assert {b["max_tokens"] for b in by["execute"]} == {900}
    assert {b["temperature"] for b in by["refine"]} == {0.1}
    assert {b["temperature"] for b in by["answer"]} == {0.0}
    assert {b["temperature"] for b in by["rate"]} == {0.1} and {b["max_tokens"] for b in by["rate"]} == {4096}
    plan = by["plan"][0]
    assert plan["messages"][0] == QUESTION[0]
    assert last_user(plan).count("What is 17 + 25?") == 2  # the question, then read again
    execute = by["execute"][0]["messages"]
    assert execute[-2] == {"role": "assistant", "content": "1. add tens (high) 2. add ones (high)"}
    assert "Solution 1:\n17 + 25 = 42" in last_user(by["refine"][0])
    assert "Reviewed: 42" in last_user(by["answer"][0])
    assert state["answers"][0]["message"]["content"] == "The answer is 42."


async def test_defaults_stop_once_planning_n_attempts_are_accepted():
    params = SPEC.validate_params({})
    assert evaluate(SPEC.expected_calls, params) == 3 * (2 * 3 + 2) + 3 == 27
    assert evaluate(SPEC.calls, params) == 3 * (2 * 6 + 2) + 3 == 45
    assert evaluate(SPEC.rounds, params) == 2 * 4 + 2 + 1 == 11
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, QUESTION, backend)
    by = calls_by_step(backend)
    assert len(backend.calls) == 27
    assert len(by["plan"]) == len(by["execute"]) == 9  # 3 attempts per chain, all accepted: no more
    assert len(by["rate"]) == 3  # each rating asked once


async def test_rejected_attempts_are_replaced_until_planning_n_are_accepted():
    # attempts 0 and 2 of each chain are cut off; 1, 3 and 4 complete
    def execute(body):
        attempt = int(body["messages"][-2]["content"].split()[-1])
        return {"content": f"solution {attempt}", "finish_reason": "length" if attempt in (0, 2) else "stop"}

    counters: dict[int, int] = {}

    def plan(body):
        n = counters.setdefault(0, 0)
        counters[0] += 1
        return f"plan attempt {n}"

    backend = ScriptedBackend(scripted(plan=plan, execute=execute))
    params = {"bestofn_n": 1, "planning_m": 6, "planning_n": 3}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    by = calls_by_step(backend)
    # wave 1: attempts 0-2 (1 accepted); wave 2: 3-4 (both accepted): 3 in all, attempt 5 never made
    assert len(by["plan"]) == len(by["execute"]) == 5
    prompt = last_user(by["refine"][0])
    assert "3 attempted solutions" in prompt and "solution 0" not in prompt and "solution 2" not in prompt
    assert len(backend.calls) < evaluate(SPEC.calls, SPEC.validate_params(params))
    assert sum("rejected (truncated)" in n for n in state["notes"]) == 2


async def test_attempts_stop_at_planning_m():
    backend = ScriptedBackend(scripted(execute={"content": "17 + 25 = 4", "finish_reason": "length"}))
    params = {"bestofn_n": 2, "planning_m": 4, "planning_n": 3}
    await run_approach(SPEC, QUESTION, backend, params=params)
    by = calls_by_step(backend)
    assert len(by["plan"]) == len(by["execute"]) == 8  # every attempt rejected: all 4 per chain
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 2 * 10 + 2


@pytest.mark.parametrize(("kind", "ratings"), [("absolute", 2), ("pairwise", 2), ("majority", 0)])
async def test_call_count_per_rating_type(kind, ratings):
    params = {**SMALL, "bestofn_rating_type": kind}
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.expected_calls, SPEC.validate_params(params)) == 8 + ratings


async def test_pairwise_count_is_n_times_n_minus_1():
    params = {"bestofn_n": 3, "planning_m": 1, "planning_n": 1, "bestofn_rating_type": "pairwise"}
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(calls_by_step(backend)["pair"]) == 6
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 3 * 4 + 6
    assert evaluate(SPEC.expected_calls, SPEC.validate_params(params)) == 3 * 4 + 6


def answer_per_chain(texts):
    """The answer step's reply depends on which chain's reviewed solution it is given."""
    return lambda body: texts[int(last_user(body).split("Reviewed by chain ")[1][0])]


def refine_per_chain():
    counter = iter(range(100))
    return lambda body: f"Reviewed by chain {next(counter)}"


async def test_absolute_rating_picks_the_best_rated():
    answers = ["The answer is 41.", "The answer is 42.", "The answer is 43."]
    ratings = {"The answer is 41.": "3", "The answer is 42.": "Rating: 9/10", "The answer is 43.": "5"}
    backend = ScriptedBackend(
        scripted(
            refine=refine_per_chain(),
            answer=answer_per_chain(answers),
            rate=lambda body: ratings[body["messages"][-2]["content"]],
        )
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"bestofn_n": 3, "planning_m": 1})
    assert state["answers"][0]["message"]["content"] == "The answer is 42."


async def test_pairwise_rating_picks_the_most_wins():
    answers = ["The answer is 41.", "The answer is 42.", "The answer is 43."]

    def judge(body):
        prompt = last_user(body)
        return "[[2]]" if prompt.split("Response 2:\n")[1].startswith("The answer is 42.") else "[[1]]"

    backend = ScriptedBackend(scripted(refine=refine_per_chain(), answer=answer_per_chain(answers), pair=judge))
    params = {"bestofn_n": 3, "planning_m": 1, "bestofn_rating_type": "pairwise"}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert state["answers"][0]["message"]["content"] == "The answer is 42."
    assert {s["index"]: s["score"] for s in state["scores"]} == {0: 1.0, 1: 4.0, 2: 1.0}


async def test_majority_rating_votes_without_calls():
    answers = ["The answer is 41.", "So 42.", "Final answer: 42"]
    backend = ScriptedBackend(scripted(refine=refine_per_chain(), answer=answer_per_chain(answers)))
    params = {"bestofn_n": 3, "planning_m": 1, "bestofn_rating_type": "majority"}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert state["answers"][0]["message"]["content"] == "So 42."
    assert "rate" not in calls_by_step(backend) and "pair" not in calls_by_step(backend)


async def test_truncated_attempts_are_rejected_and_the_first_planning_n_kept():
    def execute(body):
        plan = body["messages"][-2]["content"]
        return {"content": f"solution for {plan}", "finish_reason": "length" if plan == "plan 0" else "stop"}

    counter = iter(range(100))
    backend = ScriptedBackend(scripted(plan=lambda body: f"plan {next(counter) % 4}", execute=execute))
    params = {"bestofn_n": 1, "planning_m": 4, "planning_n": 2}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    (refine,) = calls_by_step(backend)["refine"]
    prompt = last_user(refine)
    assert "solution for plan 0" not in prompt
    assert "2 attempted solutions" in prompt
    assert any("rejected (truncated)" in n for n in state["notes"])
    assert len(calls_by_step(backend)["plan"]) == 3  # 2 at once, 1 to replace the rejected one
    assert len(backend.calls) == 3 * 2 + 2 < evaluate(SPEC.calls, SPEC.validate_params(params))


async def test_truncated_plans_are_not_executed():
    backend = ScriptedBackend(scripted(plan={"content": "1. ...", "finish_reason": "length"}))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"bestofn_n": 1, "planning_m": 3})
    by = calls_by_step(backend)
    assert "execute" not in by and len(by["plan"]) == 3
    assert last_user(by["refine"][0]).endswith("write a complete solution.")  # solves directly
    assert any("solving directly" in n for n in state["notes"])
    assert state["answers"][0]["message"]["content"] == "The answer is 42."


async def test_when_no_attempt_completes_the_truncated_solutions_are_reviewed():
    backend = ScriptedBackend(scripted(execute={"content": "17 + 25 = 4", "finish_reason": "length"}))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"bestofn_n": 1, "planning_m": 2, "planning_n": 1})
    assert "Solution 1:\n17 + 25 = 4" in last_user(calls_by_step(backend)["refine"][0])
    assert any("reviewing truncated solutions" in n for n in state["notes"])


async def test_failing_calls_drop_out_and_the_survivors_answer():
    plans = iter(range(100))

    def plan(body):
        return UpstreamError("plan lost") if next(plans) % 2 else "a plan"

    refines = iter(range(100))

    def refine(body):
        return UpstreamError("review lost") if next(refines) == 0 else "Reviewed: 42"

    backend = ScriptedBackend(scripted(plan=plan, refine=refine))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"bestofn_n": 2, "planning_m": 2})
    assert state["answers"][0]["message"]["content"] == "The answer is 42."
    assert sum("failed: plan lost" in n for n in state["notes"]) == 2
    assert any("it drops out: review lost" in n for n in state["notes"])
    assert any("collect: 1 of 2 chains answered" in n for n in state["notes"])
    assert "rate" not in calls_by_step(backend)  # one candidate: nothing to rate


async def test_no_chain_answering_fails_the_run():
    backend = ScriptedBackend(scripted(answer=UpstreamError("answers lost")))
    with pytest.raises(UpstreamError, match="no chain produced an answer"):
        await run_approach(SPEC, QUESTION, backend, params=SMALL)


async def test_attempts_of_a_wave_and_chains_are_concurrent():
    backend = ScriptedBackend(scripted(), latency=0.01, capabilities={"n_sampling": False})
    params = {"bestofn_n": 3, "planning_m": 3, "planning_n": 2}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert backend.max_in_flight == 6  # every plan (and every execution) of the wave, of every chain, at once
    expected = backend.total_usage()
    assert expected["calls"] == evaluate(SPEC.expected_calls, SPEC.validate_params(params)) == 3 * 6 + 3
    assert {k: state["usage"][k] for k in expected} == expected


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=5))
    state = {"messages": QUESTION, "request": {}, "params": SPEC.validate_params(SMALL), "stream_choice": None}
    with pytest.raises(BudgetExceeded):
        await SPEC.build().compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))


def test_params():
    params = SPEC.validate_params({})
    assert params["bestofn_n"] == 3 and params["planning_n"] == 3 and params["planning_m"] == 6
    assert [params[f"planning_temperature_step{i}"] for i in range(1, 5)] == [0.55, 0.25, 0.1, 0.0]
    assert params["bestofn_rating_type"] == "absolute" and params["rating_calls"] == 3
    assert SPEC.validate_params({"bestofn_rating_type": "pairwise"})["rating_calls"] == 6
    assert SPEC.validate_params({"bestofn_n": 1})["rating_calls"] == 0
    assert evaluate(SPEC.rounds, SPEC.validate_params({"bestofn_rating_type": "majority"})) == 10
    assert evaluate(SPEC.rounds, SPEC.validate_params({"planning_m": 3, "planning_n": 3, "bestofn_n": 1})) == 4
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"bestofn_rating_type": "elo"})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"use_plan_diversity": True})
