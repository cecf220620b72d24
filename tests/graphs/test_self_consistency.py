import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.self_consistency import SPEC  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

FIXED = {"adaptive": False}  # the paper's self-consistency: every sample in one round
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"}]
PATHS = [
    "3 + 4 = 8, so the answer is 8.",
    "He starts with 3. Buying 4 more gives 3 + 4. The answer is 7.",
    r"Counting: three plus four is seven, so $\boxed{7}$",
    "Final answer: 7.0",
    "Maybe 12? Final answer: 12",
]


async def test_majority_extracted_answer_wins_even_when_texts_differ():
    backend = ScriptedBackend(lambda body: PATHS[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED, request={"temperature": 0.9, "max_tokens": 64})
    # the full response of the first member of the winning group
    assert state["answers"][0]["message"]["content"] == PATHS[1]
    assert len(backend.calls) == 1
    call = backend.calls[0]
    assert call["n"] == 5 and call["messages"] == QUESTION
    assert call["temperature"] == 0.9 and call["max_tokens"] == 64
    assert any("3 of 5 agree" in n for n in state["notes"])


async def test_default_temperature_and_sample_count():
    backend = ScriptedBackend(lambda body: "The answer is 1.")
    await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 7})
    assert backend.calls[0]["n"] == 7 and backend.calls[0]["temperature"] == 1.0


async def test_ties_go_to_the_earliest_answer():
    replies = ["The answer is 5", "The answer is 6", "The answer is 6.", "The answer is 5."]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 4})
    assert state["answers"][0]["message"]["content"] == "The answer is 5"


async def test_free_text_groups_by_similarity():
    replies = [
        "Sunsets look red because light travels further through air.",
        "Because the moon reflects it.",
        "Sunsets look red because light travels farther through the air.",
    ]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 3})
    assert state["answers"][0]["message"]["content"] == replies[0]


async def test_one_round_without_n_support():
    backend = ScriptedBackend(lambda body: "The answer is 7.", capabilities={"n_sampling": False}, waves=[5])
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED)
    assert backend.wave_errors == []  # the 5 samples were in flight together
    assert len(backend.calls) == 5 and backend.max_in_flight == 5
    assert all(b.get("n", 1) == 1 for b in backend.calls)
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_failed_and_empty_samples_are_skipped():
    replies = ["", UpstreamError("lost"), "The answer is 9.", "The answer is 7.", "So 7."]
    backend = ScriptedBackend(lambda body: replies[body["call_index"]], capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED)
    assert state["answers"][0]["message"]["content"] == "The answer is 7."
    assert state["usage"]["calls"] == 4
    assert any("2 of 5 samples failed or came back empty" in n for n in state["notes"])


async def test_all_samples_failing_raises():
    backend = ScriptedBackend(lambda body: UpstreamError("gone"), capabilities={"n_sampling": False})
    with pytest.raises(UpstreamError, match="gone"):
        await run_approach(SPEC, QUESTION, backend, params=FIXED)


async def test_usage_is_summed_exactly_with_n():
    backend = ScriptedBackend(lambda body: PATHS[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params=FIXED)
    expected = backend.total_usage()
    assert expected["calls"] == 1
    assert {k: state["usage"][k] for k in expected} == expected
    assert state["usage"]["completion_tokens"] == sum(len(p.split()) for p in PATHS)


def test_spec():
    params = SPEC.validate_params({})
    assert params == {
        "samples": 5,
        "temperature": None,
        "similarity_threshold": 0.8,
        "adaptive": True,
        "batch": 2,
        "stop_rule": "lead",
        "min_samples": 2,
        "min_lead": 2,
        "stop_threshold": 0.95,
    }
    assert evaluate(SPEC.calls, params) == evaluate(SPEC.rounds, params) == 3  # rounds of 2, 2, 1
    assert evaluate(SPEC.expected_calls, params) == 1  # two agreeing paths settle it
    assert evaluate(SPEC.calls, {**params, **FIXED}) == evaluate(SPEC.rounds, {**params, **FIXED}) == 1
    adaptive = SPEC.validate_params({"batch": 3, "samples": 10})
    assert evaluate(SPEC.calls, adaptive) == evaluate(SPEC.rounds, adaptive) == 4
    with pytest.raises(InvalidRequest, match="rounds"):
        SPEC.validate_params({"batch": 1, "samples": 64})
    assert SPEC.validate_params({**FIXED, "batch": 1, "samples": 64})["samples"] == 64  # fixed: one round
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"stop_threshold": 0.5})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"stop_rule": "never"})


# ---- adaptive consistency (arXiv 2305.11860), the default ----------------------------------------

BETA = {"stop_rule": "beta", "batch": 4, "samples": 12}


async def test_default_stops_after_two_agreeing_paths():
    backend = ScriptedBackend(lambda body: "The answer is 7.")
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert len(backend.calls) == 1 and backend.calls[0]["n"] == 2
    assert len(state["candidates"]) == 2 < 5
    assert any("2 of 2 agree" in n for n in state["notes"])


async def test_default_samples_on_while_split_and_stops_at_a_lead_of_two():
    answers = iter(["7", "8", "7", "7"])
    backend = ScriptedBackend(lambda body: f"The answer is {next(answers)}.")
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert [b["n"] for b in backend.calls] == [2, 2]  # 1-1: go on; 3-1: a lead of 2, stop at 4 of 5
    assert state["answers"][0]["message"]["content"] == "The answer is 7."


async def test_default_spends_the_budget_on_a_split_vote_and_votes_like_fixed():
    answers = ["7", "8", "9", "8", "7"]
    adaptive_backend = ScriptedBackend(
        lambda body: f"The answer is {answers[len(adaptive_backend.calls) * 2 - 2 + body['choice_index']]}."
    )
    adaptive, _ = await run_approach(SPEC, QUESTION, adaptive_backend)
    fixed_backend = ScriptedBackend(lambda body: f"The answer is {answers[body['choice_index']]}.")
    fixed, _ = await run_approach(SPEC, QUESTION, fixed_backend, params=FIXED)
    assert [b.get("n", 1) for b in adaptive_backend.calls] == [2, 2, 1]
    assert len(adaptive_backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({}))
    assert adaptive["answers"] == fixed["answers"]  # 7 x2 vs 8 x2: the earlier answer, as fixed picks
    assert adaptive["answers"][0]["message"]["content"] == "The answer is 7."


async def test_stops_when_the_rest_of_the_budget_cannot_overturn_the_leader():
    answers = iter(["7", "7", "7", "8", "9"])
    backend = ScriptedBackend(lambda body: f"The answer is {next(answers)}.")
    params = {"min_lead": 4, "samples": 5, "batch": 1}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    # after 3: 7 x3, 2 left, a lead of 3 > 2, so the full budget could not change the winner
    assert len(backend.calls) == 3


async def test_beta_rule_stops_after_one_round_when_unanimous():
    backend = ScriptedBackend(lambda body: "The answer is 7.")
    state, _ = await run_approach(SPEC, QUESTION, backend, params=BETA)
    # 4 of 4 agree: P(leader stays ahead) = 31/32 >= 0.95
    assert len(backend.calls) == 1 < evaluate(SPEC.calls, SPEC.validate_params(BETA)) == 3
    assert backend.calls[0]["n"] == 4
    assert any("4 of 4 agree" in n for n in state["notes"])


async def test_beta_rule_samples_until_the_leader_is_clear():
    answers = iter(["7", "8", "7", "9"] + ["7"] * 20)
    backend = ScriptedBackend(lambda body: f"The answer is {next(answers)}.")
    state, _ = await run_approach(SPEC, QUESTION, backend, params=BETA)
    # after 4: 7 x2 vs 1 (0.69); after 8: 7 x6 vs 1 (0.996) -> stop
    assert len(backend.calls) == 2
    assert state["answers"][0]["message"]["content"] == "The answer is 7."
    assert sorted(c["index"] for c in state["candidates"]) == list(range(8))
    assert any("6 of 8 agree" in n for n in state["notes"])


async def test_adaptive_full_path_matches_the_formula():
    answers = iter(["1", "2", "3"] * 10)
    backend = ScriptedBackend(lambda body: f"The answer is {next(answers)}.")
    params = {"batch": 3, "samples": 10}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params)) == 4
    assert [b["n"] for b in backend.calls[:3]] == [3, 3, 3] and backend.calls[3].get("n", 1) == 1  # 10 in all
    assert len(state["candidates"]) == 10
    assert state["answers"][0]["message"]["content"] == "The answer is 1."  # 1 x4 leads


async def test_adaptive_rounds_are_concurrent_inside_and_sequential_across():
    answers = iter(["7", "8"] + ["7"] * 20)
    backend = ScriptedBackend(
        lambda body: f"The answer is {next(answers)}.", capabilities={"n_sampling": False}, waves=[4, 4]
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params=BETA)
    # round 1: 7 x3 vs 8 (0.81); round 2: 7 x7 vs 1 -> stop after 2 dependent rounds of 4 concurrent calls
    assert backend.wave_errors == []
    assert len(backend.calls) == 8 and backend.max_in_flight == 4
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_adaptive_later_round_failing_votes_on_what_it_has():
    def respond(body):
        return (
            UpstreamError("gone")
            if body["call_index"] >= 4
            else ["The answer is 7.", "The answer is 8."][body["call_index"] % 2]
        )

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params=BETA)
    assert len(backend.calls) == 8
    assert state["answers"][0]["message"]["content"] == "The answer is 7."
    assert any("round failed, voting on what we have" in n for n in state["notes"])


async def test_cut_paths_do_not_vote_while_others_answer():
    replies = [
        {"content": "3 + 4 is 7, so 7.", "finish_reason": "stop"},
        {"content": "Let me count: 3, 4, 5, 6... 12", "finish_reason": "length"},
        {"content": "Counting on, 12", "finish_reason": "length"},
    ]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 3})
    assert state["answers"][0]["message"]["content"] == "3 + 4 is 7, so 7."
    assert any("2 cut at max_tokens not counted" in n for n in state["notes"])


async def test_cut_paths_vote_when_every_path_was_cut():
    backend = ScriptedBackend(
        lambda body: {"content": ["So far 7", "So far 8", "So far 8"][body["choice_index"]], "finish_reason": "length"}
    )
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 3})
    assert state["answers"][0]["message"]["content"] == "So far 8"


async def test_tool_call_majority_returns_the_whole_message():
    def call(arguments):
        return {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}

    replies = [
        {"content": None, "tool_calls": [call('{"id": 2}')], "finish_reason": "tool_calls"},
        {"content": "Let me check.", "tool_calls": [call('{"id":3}')], "finish_reason": "tool_calls"},
        {"content": None, "tool_calls": [call('{ "id": 3.0 }')], "finish_reason": "tool_calls"},
        "The answer is 3.",
    ]
    backend = ScriptedBackend(lambda body: replies[body["choice_index"]])
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**FIXED, "samples": 4})
    (answer,) = state["answers"]
    assert answer["message"] == {"role": "assistant", "content": "Let me check.", "tool_calls": [call('{"id":3}')]}
    assert answer["finish_reason"] == "tool_calls"


async def test_budget_exceeded_propagates_from_a_later_round():
    backend = ScriptedBackend(lambda body: f"The answer is {body['choice_index']}.")  # never agreeing
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=2))
    state = {"messages": QUESTION, "request": {}, "params": SPEC.validate_params(BETA), "stream_choice": None}
    with pytest.raises(BudgetExceeded):
        await SPEC.build().compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))
