import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.majority_voting import SPEC  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

FIXED = {"adaptive": False}  # all k samples in one round
QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
REPLIES = [
    "6 * 7 = 48. The answer is 48.",
    "Six sevens: 7+7+7+7+7+7 = 42. Final answer: 42",
    r"$6 \cdot 7 = \boxed{42}$",
    "<think>maybe 48</think>It is 42.",
    "The answer is 48",
    "#### 42.0",
    "I am not sure.",
    "",
]


async def test_one_call_of_k_samples_and_the_majority_answer_wins():
    backend = ScriptedBackend(lambda body: REPLIES[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(FIXED)) == 1
    call = backend.calls[0]
    assert call["n"] == 8 and call["temperature"] == 0.6 and call["messages"] == QUESTION
    # 42 four times (boxed, final answer, last number after <think>, ####) beats 48 twice
    assert state["answers"][0]["message"]["content"] == REPLIES[1]
    assert any("4 of 7 agree" in n for n in state["notes"])  # the empty reply is dropped
    assert any("1 of 8 samples failed or came back empty" in n for n in state["notes"])


async def test_client_temperature_and_k():
    backend = ScriptedBackend(lambda body: "The answer is 1.")
    await run_approach(
        SPEC, QUESTION, backend, request={"temperature": 0.2, "max_tokens": 50}, params={**FIXED, "k": 3}
    )
    assert (
        backend.calls[0]["n"] == 3 and backend.calls[0]["temperature"] == 0.2 and backend.calls[0]["max_tokens"] == 50
    )
    backend = ScriptedBackend(lambda body: "The answer is 1.")
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.2}, params={**FIXED, "temperature": 1.1})
    assert backend.calls[0]["temperature"] == 1.1


async def test_ties_go_to_the_earliest_answer():
    replies = ["The answer is B", "The answer is A", "The answer is A", "The answer is B"]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "k": 4})
    assert state["answers"][0]["message"]["content"] == "The answer is B"


def tool_call(city, spacing=""):
    return {
        "id": f"call_{city}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": f'{{"city":{spacing}"{city}"}}'},
    }


async def test_tool_call_majority_returns_the_whole_winning_message():
    replies = [
        {"content": None, "tool_calls": [tool_call("Rome")], "finish_reason": "tool_calls"},
        {"content": None, "tool_calls": [tool_call("Paris")], "finish_reason": "tool_calls"},
        {"content": "", "tool_calls": [tool_call("Paris", spacing=" ")], "finish_reason": "tool_calls"},
        "It is sunny in Paris.",
    ]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    state, _ = await run_approach(SPEC, QUESTION, backend, request={"tools": tools}, params={**FIXED, "k": 4})
    assert backend.calls[0]["tools"] == tools
    (answer,) = state["answers"]
    assert answer["finish_reason"] == "tool_calls"
    assert answer["message"]["tool_calls"] == [tool_call("Paris")]
    assert answer["message"]["role"] == "assistant"
    assert any("2 of 4 agree" in n and "get_weather" in n for n in state["notes"])


async def test_k_concurrent_calls_in_one_round_without_n_support():
    backend = ScriptedBackend(lambda body: "The answer is 42.", capabilities={"n_sampling": False}, waves=[8])
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED)
    assert backend.wave_errors == []  # all 8 samples in flight together
    assert len(backend.calls) == 8 and backend.max_in_flight == 8
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_failed_samples_leave_the_survivors():
    replies = [UpstreamError("lost"), "The answer is 9.", UpstreamError("lost"), "So 9.", "The answer is 3."]
    backend = ScriptedBackend(lambda body: replies[body["call_index"]], capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "k": 5})
    assert state["answers"][0]["message"]["content"] == "The answer is 9."
    assert state["usage"]["calls"] == 3
    assert any("2 of 5 samples failed" in n for n in state["notes"])


async def test_no_extractable_answer_groups_by_similarity():
    replies = ["Paris is lovely in spring.", "London is foggy.", "Paris is lovely in the spring."]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "k": 3})
    assert state["answers"][0]["message"]["content"] == replies[0]


async def test_all_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("down"), capabilities={"n_sampling": False})
    with pytest.raises(UpstreamError, match="down"):
        await run_approach(SPEC, QUESTION, backend, params=FIXED)


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(lambda body: "The answer is 1.", capabilities={"n_sampling": False})
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=3))
    state = {"messages": QUESTION, "request": {}, "params": SPEC.validate_params(FIXED), "stream_choice": None}
    with pytest.raises(BudgetExceeded):
        await SPEC.build().compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))


def test_spec():
    params = SPEC.validate_params({})
    assert {k: params[k] for k in ("k", "temperature", "similarity_threshold", "adaptive", "batch")} == {
        "k": 8,
        "temperature": None,
        "similarity_threshold": 0.8,
        "adaptive": True,
        "batch": 2,
    }
    assert evaluate(SPEC.calls, params) == evaluate(SPEC.rounds, params) == 4  # at most 4 rounds of 2
    assert evaluate(SPEC.expected_calls, params) == 1
    assert evaluate(SPEC.calls, SPEC.validate_params(FIXED)) == 1
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"k": 0})
    with pytest.raises(InvalidRequest, match="rounds"):
        SPEC.validate_params({"k": 64, "batch": 1})


async def test_adaptive_by_default_stops_once_settled():
    answers = iter(["42", "48", "42", "42"] + ["48"] * 10)
    backend = ScriptedBackend(lambda body: f"The answer is {next(answers)}.")
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert [b["n"] for b in backend.calls] == [2, 2]  # 1-1, then 3-1: settled at 4 of 8
    assert state["answers"][0]["message"]["content"] == "The answer is 42."
