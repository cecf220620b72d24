import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.judgments import parse_unit_score  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.mcts import SPEC, USER_SIMULATOR  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

QUESTION = [{"role": "system", "content": "You are a careful tutor."}, {"role": "user", "content": "What is 17 * 3?"}]
REPLIES = ["It is 41.", "It is 51.", "It is 54."]
SCORES = {"It is 41.": "2", "It is 51.": "9", "It is 54.": "3"}


def stage(body):
    if body["messages"][0]["content"] == USER_SIMULATOR:
        return "simulate"
    if last_user(body).startswith("Evaluate your previous reply"):
        return "evaluate"
    return "expand"


def scripted(scores=SCORES, replies=REPLIES, user="Can you double-check that?"):
    """Replies by choice index; a simulated user turn; an evaluation by the text of the reply judged."""

    def respond(body):
        kind = stage(body)
        if kind == "simulate":
            return user(body) if callable(user) else user
        if kind == "evaluate":
            score = scores[body["messages"][-2]["content"]]
            return score(body) if callable(score) else score
        return replies[body["choice_index"]]

    return respond


def calls_of(backend, kind):
    return [b for b in backend.calls if stage(b) == kind]


def test_graph_has_the_search_loop():
    graph = SPEC.build().compile().get_graph()
    assert set(graph.nodes) >= {"select", "expand", "simulate", "evaluate", "backpropagate", "answer"}
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "select"),
        ("select", "expand"),
        ("expand", "simulate"),
        ("simulate", "evaluate"),
        ("evaluate", "backpropagate"),
        ("backpropagate", "select"),
        ("backpropagate", "answer"),
        ("answer", "__end__"),
    } <= edges


@pytest.mark.parametrize(
    "params",
    [{}, {"simulations": 3}, {"simulations": 2, "depth": 2, "expansions": 2}, {"simulations": 1, "expansions": 1}],
)
async def test_call_count_matches_the_formula(params):
    backend = ScriptedBackend(scripted(scores={r: "5" for r in REPLIES}))
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    validated = SPEC.validate_params(params)
    assert len(backend.calls) == evaluate(SPEC.calls, validated)
    assert state["usage"]["calls"] == len(backend.calls)
    expansions = [b for b in backend.calls if int(b.get("n") or 1) == validated["expansions"] and stage(b) == "expand"]
    if validated["expansions"] > 1:  # (rollout replies look like expansions, but sample one choice)
        assert len(expansions) == validated["simulations"]
    assert evaluate(SPEC.calls, SPEC.validate_params({})) == 14


async def test_requests_use_the_client_parameters_where_they_belong():
    tools = [{"type": "function", "function": {"name": "f"}}]
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.4, "max_tokens": 200, "tools": tools})
    expand, *_ = calls_of(backend, "expand")
    assert expand["n"] == 3 and expand["messages"] == QUESTION
    assert expand["temperature"] == 0.4 and expand["max_tokens"] == 200 and expand["tools"] == tools
    for sim in calls_of(backend, "simulate"):
        assert "tools" not in sim and sim["temperature"] == 1.0 and sim["max_tokens"] == 512
        assert "You are a careful tutor." in sim["messages"][1]["content"]
    for ev in calls_of(backend, "evaluate"):
        assert "tools" not in ev and ev["temperature"] == 0.1 and ev["max_tokens"] == 256
        assert ev["messages"][0] == QUESTION[0]  # the client's system prompt
        assert "Can you double-check that?" in ev["messages"][-1]["content"]  # the follow-up as evidence


async def test_uct_descends_into_the_best_branch_and_it_is_chosen():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"simulations": 3})
    assert state["answers"][0]["message"] == {"role": "assistant", "content": "It is 51."}
    expands = calls_of(backend, "expand")
    # simulation 1 expands the root, 2 the best reply's follow-up, 3 a follow-up one level deeper
    assert [len(e["messages"]) for e in expands] == [2, 4, 6]
    assert expands[1]["messages"][2] == {"role": "assistant", "content": "It is 51."}
    assert expands[1]["messages"][3] == {"role": "user", "content": "Can you double-check that?"}
    nodes = state["tree"]["nodes"]
    assert max(n["depth"] for n in nodes) == 3
    json.dumps(state["tree"])  # checkpointable


async def test_one_simulation_is_a_judged_best_of_the_expansions():
    # one simulation: every reply has one visit of its own score, so the score decides
    scores = {"It is 41.": "4", "It is 51.": "6", "It is 54.": "**8/10**"}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(scores)), params={"simulations": 1})
    assert state["answers"][0]["message"]["content"] == "It is 54."


def misled_judge():
    """The judge at the root prefers the wrong "It is 54." (9) to the right "It is 51." (8); the
    simulated user then points the mistake out, and every reply after that exchange is judged 1,
    while the conversation after "It is 51." goes on well (every follow-up reply judged 9)."""

    def user(body):
        return "That's wrong: 17 * 3 is 51." if body["messages"][1]["content"].count("It is 54.") else "Thanks!"

    def judge(body):
        earlier = [m["content"] for m in body["messages"][:-2] if m["role"] == "assistant"]
        if not earlier:
            return {"It is 41.": "2", "It is 51.": "8", "It is 54.": "9"}[body["messages"][-2]["content"]]
        return "1" if earlier[0] == "It is 54." else "9"

    def respond(body):
        if stage(body) == "evaluate":
            return judge(body)
        return scripted(user=user)(body)

    return respond


@pytest.mark.parametrize(("simulations", "chosen"), [(1, "It is 54."), (2, "It is 51."), (3, "It is 51.")])
async def test_more_simulations_change_the_answer(simulations, chosen):
    backend = ScriptedBackend(misled_judge())
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"simulations": simulations})
    assert state["answers"][0]["message"]["content"] == chosen
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({"simulations": simulations}))
    expands = calls_of(backend, "expand")
    if simulations >= 2:  # the second simulation plays the leading reply's conversation one level deeper
        assert expands[1]["messages"][2]["content"] == "It is 54."
        assert expands[1]["messages"][3]["content"] == "That's wrong: 17 * 3 is 51."
    if simulations >= 3:  # its follow-ups went badly, so UCT turns to the other branch
        assert expands[2]["messages"][2]["content"] == "It is 51."
        nodes = state["tree"]["nodes"]
        by_text = {n["data"]["text"]: n for n in nodes if n["depth"] == 1}
        assert by_text["It is 54."]["visits"] == by_text["It is 51."]["visits"] == 2
        assert by_text["It is 54."]["value"] == pytest.approx(0.9 + 0.1)
        assert by_text["It is 51."]["value"] == pytest.approx(0.8 + 0.9)
        assert nodes[0]["visits"] == 3


async def test_default_search_can_demote_the_first_rounds_best():
    backend = ScriptedBackend(misled_judge())
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params({})) == 14
    assert state["answers"][0]["message"]["content"] == "It is 51."


async def test_loose_and_unreadable_evaluations():
    scores = {"It is 41.": "Score: 0.8", "It is 51.": "I cannot judge this.", "It is 54.": "Rating: 3/10"}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(scores)), params={"simulations": 1})
    nodes = {n["data"].get("text"): n for n in state["tree"]["nodes"][1:]}
    assert nodes["It is 41."]["data"]["score"] == pytest.approx(0.8)
    assert nodes["It is 54."]["data"]["score"] == pytest.approx(0.3)
    assert nodes["It is 51."]["data"]["score"] is None and nodes["It is 51."]["visits"] == 0
    assert any("no score found for reply" in n for n in state["notes"])
    assert state["answers"][0]["message"]["content"] == "It is 41."


@pytest.mark.parametrize(
    "text,expected",
    [
        ("7", 0.7),
        ("**7/10**", 0.7),
        ("Score: 0.8", 0.8),
        ("80%", 0.8),
        ("I'd give it 9 out of 10", 0.9),
        ("<think>maybe 2</think>10", 1.0),
        ("1.0", 1.0),
        ("great answer", None),
        ("", None),
        ("Score: 42", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_unit_score(text) == (pytest.approx(expected) if expected is not None else None)


async def test_independent_calls_are_concurrent():
    # per simulation: expand (one n=3 call), the 3 evaluations together, the 3 replies together
    waves = [1, 3, 3] * 2
    backend = ScriptedBackend(scripted(), waves=waves)
    state, _ = await run_approach(SPEC, QUESTION, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == [] and len(backend.calls) == sum(waves) == 14
    assert rounds == len(waves) == 6


async def test_without_n_support_the_expansion_is_concurrent_calls():
    backend = ScriptedBackend(scripted(), capabilities={"n_sampling": False}, waves=[3, 3, 3])
    await run_approach(SPEC, QUESTION, backend, params={"simulations": 1})
    assert len(backend.calls) == 3 + 3 + 3
    assert backend.wave_errors == []  # 3 concurrent expansions, then 3 evaluations, then 3 replies


async def test_failed_simulations_leave_unexpandable_but_evaluated_replies():
    def user(body):
        if "It is 51." in body["messages"][1]["content"]:
            return UpstreamError("simulator down")
        return "Thanks."

    backend = ScriptedBackend(scripted(user=user))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    nodes = {n["data"].get("text"): n for n in state["tree"]["nodes"][1:] if n["depth"] == 1}
    assert nodes["It is 51."]["terminal"] and nodes["It is 51."]["data"]["score"] == pytest.approx(0.9)
    assert any("could not be played forward: simulator down" in n for n in state["notes"])
    # the best reply cannot be expanded: the second simulation expands the next best
    assert [len(e["messages"]) for e in calls_of(backend, "expand")] == [2, 4]
    assert calls_of(backend, "expand")[1]["messages"][2]["content"] == "It is 54."
    # "It is 51." is sampled again below "It is 54.", and its simulation fails there too
    assert sum("could not be played forward" in n for n in state["notes"]) == 2
    assert state["usage"]["calls"] == len(backend.calls) - 2 == 12  # failed calls are not answered ones
    assert state["answers"][0]["message"]["content"] in {"It is 51.", "It is 54."}


async def test_failed_evaluations_are_noted_and_leave_the_reply_unvisited():
    scores = {**SCORES, "It is 51.": UpstreamError("judge down")}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(scores)), params={"simulations": 1})
    assert any("evaluating reply" in n and "judge down" in n for n in state["notes"])
    assert state["answers"][0]["message"]["content"] == "It is 54."


async def test_all_evaluations_failing_still_answers():
    scores = {r: UpstreamError("judge down") for r in REPLIES}
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted(scores)), params={"simulations": 1})
    assert state["answers"][0]["message"]["content"] == "It is 41."
    assert any("no reply could be evaluated" in n for n in state["notes"])


async def test_empty_and_failed_samples_are_dropped():
    def respond(body):
        if stage(body) == "expand":
            return [UpstreamError("one failed"), "", "It is 51."][body["call_index"] % 3]
        return scripted()(body)

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"simulations": 1})
    assert [n["data"]["text"] for n in state["tree"]["nodes"][1:]] == ["It is 51."]
    assert any("2 of 3 samples failed or came back empty" in n for n in state["notes"])


async def test_everything_failing_raises_the_upstream_error():
    backend = ScriptedBackend(lambda body: UpstreamError("upstream is down", upstream_status=500))
    with pytest.raises(UpstreamError, match="upstream is down"):
        await run_approach(SPEC, QUESTION, backend)


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=3))
    graph = SPEC.build().compile()
    with pytest.raises(BudgetExceeded):
        await graph.ainvoke(
            {"messages": QUESTION, "request": {}, "params": SPEC.validate_params({}), "stream_choice": None},
            context=RunContext(run_id="t", llm=llm),
        )


async def test_runs_under_a_checkpointer():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder())
    graph = SPEC.build().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "mcts"}}
    state = await graph.ainvoke(
        {"messages": QUESTION, "request": {}, "params": SPEC.validate_params({}), "stream_choice": None},
        config,
        context=RunContext(run_id="t", llm=llm),
    )
    saved = await graph.aget_state(config)
    assert saved.values["tree"] == state["tree"] and saved.values["simulation"] == 2


def test_params_and_their_optillm_names():
    defaults = SPEC.validate_params({})
    assert (defaults["simulations"], defaults["exploration"], defaults["depth"]) == (2, 0.2, 1)
    aliased = SPEC.validate_params({"mcts_simulations": 4, "mcts_exploration": 1.0, "mcts_depth": 2})
    assert (aliased["simulations"], aliased["exploration"], aliased["depth"]) == (4, 1.0, 2)
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"simulations": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"rollouts": 3})
    assert SPEC.needs == frozenset({"text"}) and SPEC.papers == ("arXiv:2405.00451",)


async def test_empty_follow_ups_and_broken_rollouts_are_noted_and_still_counted():
    def user(body):
        transcript = body["messages"][1]["content"]
        if transcript.endswith("Assistant: It is 41.\n\nWrite the user's next message."):
            return ""  # the simulated user says nothing
        return "Why?"

    def respond(body):
        if stage(body) == "expand" and "n" not in body:  # a rollout's assistant turn (depth 2)
            return (
                UpstreamError("rollout reply failed") if "It is 54." in body["messages"][2]["content"] else "Because."
            )
        return scripted(user=user)(body)

    backend = ScriptedBackend(respond)
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"simulations": 1, "depth": 2})
    nodes = {n["data"]["text"]: n for n in state["tree"]["nodes"][1:]}
    assert nodes["It is 41."]["terminal"] and "user" not in nodes["It is 41."]["data"]
    assert nodes["It is 51."]["data"]["rollout"] == [
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Why?"},
    ]
    assert nodes["It is 54."]["data"]["user"] == "Why?" and nodes["It is 54."]["data"]["rollout"] == []
    assert any("after reply 1 came back empty" in n for n in state["notes"])
    assert any("ended early: rollout reply failed" in n for n in state["notes"])
    # usage is exact: every answered call, including the empty follow-up
    assert {k: state["usage"][k] for k in backend.total_usage()} == backend.total_usage()
