import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.rstar import (  # noqa: E402
    ACTION_PROMPTS,
    REMAINING,
    SPEC,
    Tree,
    _prefix,
    choose,
    final_answer,
)
from optigraph.memory.records import NullRecorder  # noqa: E402

SYSTEM = {"role": "system", "content": "Answer in French if you can."}
QUESTION = [SYSTEM, {"role": "user", "content": "A train goes 120 km in 1.5 h. What is its speed?"}]


def stage(body):
    prompt = last_user(body)
    if "beginning of a solution" in prompt or "Solve the problem step by step and end" in prompt:
        return "check"
    return next(action for action, instruction in ACTION_PROMPTS.items() if prompt.endswith(instruction))


def scripted(steps=None, check="So the speed is 80 km/h. The final answer is 80."):
    """A reasoning step by action (text or function of the body); the discriminator's completion."""
    defaults = {
        "one_step": "Speed is distance divided by time.",
        "remaining": "120 / 1.5 = 80. The final answer is 80.",
        "sub_question": "Sub-question: what is 120 / 1.5?\nAnswer: 80.",
        "re_answer": "Answer: 120 / 1.5 = 80.",
        "rephrase": "Distance: 120 km. Time: 1.5 h. Asked: the average speed.",
    }
    table = {**defaults, **(steps or {})}

    def respond(body):
        kind = stage(body)
        reply = check if kind == "check" else table[kind]
        return reply(body) if callable(reply) else reply

    return respond


def test_graph_has_the_search_loop_and_the_discriminator():
    graph = SPEC.build().compile().get_graph()
    assert set(graph.nodes) >= {"select", "expand", "simulate", "evaluate", "backpropagate", "discriminate", "answer"}
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "select"),
        ("select", "expand"),
        ("expand", "simulate"),
        ("simulate", "evaluate"),
        ("evaluate", "backpropagate"),
        ("backpropagate", "select"),
        ("backpropagate", "discriminate"),
        ("discriminate", "answer"),
        ("answer", "__end__"),
    } <= edges


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": 1},
        {"max_depth": 1, "num_rollouts": 4, "rollout_batch": 4},
        {"max_depth": 1, "num_rollouts": 3, "rollout_batch": 1},
    ],
)
async def test_call_count_on_the_full_path_matches_the_formula(params):
    # one step per trajectory, every rollout from the root: the formula's full path
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params))
    assert state["usage"]["calls"] == len(backend.calls)


async def test_calls_never_exceed_the_formula_and_match_the_tree():
    backend = ScriptedBackend(scripted(steps={"remaining": "120 / 1.5 = 80. The final answer is 80."}))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    params = SPEC.validate_params({})
    assert evaluate(SPEC.calls, params) == 20
    steps = [n for n in state["tree"]["nodes"][1:] if n["data"].get("text")]
    trajectories = [n for n in state["tree"]["nodes"] if n["terminal"] and n["data"].get("answer")]
    assert len(backend.calls) == len(steps) + len(trajectories) <= 20
    assert len(trajectories) == 5  # every rollout ends in a trajectory
    assert sum(stage(b) == "check" for b in backend.calls) == 5
    json.dumps(state["tree"])


async def test_uct_acts_between_waves():
    backend = ScriptedBackend(scripted())
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"num_rollouts": 6, "rollout_batch": 2})
    nodes = state["tree"]["nodes"]
    # later waves branch below the root, from steps earlier rollouts left in the tree
    assert any(len(n["children"]) > 1 for n in nodes[1:])
    assert len(nodes[0]["children"]) < 6
    assert nodes[0]["visits"] == 6


async def test_rollouts_run_in_concurrent_waves():
    params = {"max_depth": 1, "num_rollouts": 4, "rollout_batch": 2}
    waves = [2, 2, 4]  # two waves of two rollouts, then the checks of all four at once
    backend = ScriptedBackend(scripted(), waves=waves)
    await run_approach(SPEC, QUESTION, backend, params=params)
    assert backend.wave_errors == [] and len(backend.calls) == sum(waves)
    assert evaluate(SPEC.rounds, SPEC.validate_params(params)) == len(waves)


async def test_default_wall_time_stays_within_the_rounds():
    # sequential waves of rollout steps (UCT acts between them), then every check at once: never more
    # dependent rounds than the formula's, and far fewer than the calls made one after another
    waves = [2, 1, 2, 2, 1, 1, 5]
    backend = ScriptedBackend(scripted(), waves=waves)
    await run_approach(SPEC, QUESTION, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == [] and len(backend.calls) == sum(waves) == 14
    assert rounds == 10 and len(waves) <= rounds


async def test_the_consistent_trajectory_wins_and_is_returned_whole():
    # the full solution says -2.5 (wrong); sub-questions reach 80; the discriminator completes to 80
    steps = {
        "remaining": "Speed is time over distance, minus 3. The final answer is -2.5.",
        "sub_question": "Sub-question: what is 120 / 1.5?\nAnswer: 80. The final answer is 80.",
    }
    backend = ScriptedBackend(scripted(steps=steps))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"num_rollouts": 6})
    answers = {n["data"]["answer"] for n in state["tree"]["nodes"] if n["terminal"] and n["data"].get("answer")}
    assert answers == {"-2.5", "80"}
    text = state["answers"][0]["message"]["content"]
    assert "Sub-question: what is 120 / 1.5?" in text and text.rstrip().endswith("The final answer is 80.")
    assert any("from consistent" in n for n in state["notes"])


async def test_without_any_consistent_trajectory_value_then_frequency_decide():
    steps = {
        "remaining": "The final answer is 3/4.",
        "sub_question": "Sub-question: what is asked?\nAnswer: the speed. The final answer is -7.",
    }
    backend = ScriptedBackend(scripted(steps=steps, check="I am not sure. The final answer is 12."))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"num_rollouts": 6})
    assert any("none consistent" in n for n in state["notes"])
    # the root's one-step solution has the highest value; "3/4" is also the most frequent answer
    assert state["answers"][0]["message"]["content"] == "The final answer is 3/4."


def test_choose_on_constructed_candidates():
    def cand(node, answer, value, consistent):
        return {"node": node, "answer": answer, "value": value, "consistent": consistent}

    # a consistent trajectory beats higher-valued inconsistent ones
    best, how = choose([cand(1, "5", 0.9, False), cand(2, "6", 0.4, True), cand(3, "7", 0.6, True)])
    assert (best["node"], how) == (3, "consistent")
    # equal values: the more frequent answer (counted over every trajectory) wins
    best, _ = choose([cand(1, "5", 0.5, True), cand(2, "6", 0.5, True), cand(3, "6", 0.2, False)])
    assert best["node"] == 2
    # full tie: the earliest
    best, _ = choose([cand(4, "5", 0.5, True), cand(2, "6", 0.5, True)])
    assert best["node"] == 2
    # nothing confirmed: unchecked ones, then all
    best, how = choose([cand(1, "5", 0.9, False), cand(2, "6", 0.1, None)])
    assert (best["node"], how) == (2, "unchecked")
    best, how = choose([cand(1, "5", 0.3, False), cand(2, "6", 0.8, False)])
    assert (best["node"], how) == (2, "all, none consistent")
    with pytest.raises(ValueError):
        choose([])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So 2 - 5 = -3. The final answer is -3.", "-3"),
        ("The final answer is 2.75", "2.75"),
        ("Thus \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("The final answer is x = 5 or x = -5.", "x = 5 or x = -5"),
        ("Sub-question: what is 3+4?\nAnswer: 7.", None),  # a sub-answer is no final answer
        ("The final answer is $1,000.", "1000"),
    ],
)
def test_final_answers_are_not_limited_to_integers(text, expected):
    assert final_answer(text) == expected


def test_the_discriminator_prefix_is_a_truncated_trajectory_without_the_answer():
    tree = Tree.new({"action": "question"})
    parent = 0
    for i in range(9):
        parent = tree.add_child(parent, {"action": "one_step", "text": f"Step {i}."})
    end = tree.add_child(parent, {"action": REMAINING, "text": "Step 9.\nThe final answer is 4."}, terminal=True)
    state = {"messages": QUESTION, "request": {"seed": 7}}
    for seed in range(20):
        state["request"]["seed"] = seed
        lines = _prefix(state, tree, end).splitlines()
        assert 2 <= len(lines) <= 8 and lines == [f"Step {i}." for i in range(len(lines))]


async def test_the_client_system_prompt_and_history_are_kept():
    history = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, QUESTION[1]]
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, history, backend, request={"temperature": 0.3, "tools": [{"type": "function"}]})
    for body in backend.calls:
        system = body["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("Answer in French if you can.")
        assert "The final answer is <answer>" in system["content"]
        assert body["messages"][1:3] == history[1:3]
        assert "A train goes 120 km" in body["messages"][-1]["content"]
        assert "tools" not in body
    steps = [b for b in backend.calls if stage(b) != "check"]
    assert all(b["temperature"] == 0.3 for b in steps)
    assert all(b["temperature"] == 0.2 for b in backend.calls if stage(b) == "check")


async def test_failed_steps_end_their_rollout_and_are_noted():
    failing = {"one_step": UpstreamError("step failed"), "rephrase": UpstreamError("step failed")}
    backend = ScriptedBackend(scripted(steps=failing))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert any("failed: step failed" in n for n in state["notes"])
    assert final_answer(state["answers"][0]["message"]["content"]) == "80"
    failed = [n for n in state["tree"]["nodes"] if n["data"].get("failed")]
    assert failed and all(n["visits"] == 0 for n in failed)  # virtual losses reverted
    assert {k: state["usage"][k] for k in backend.total_usage()} == backend.total_usage()  # exact usage


async def test_failed_checks_leave_trajectories_unchecked():
    backend = ScriptedBackend(scripted(check=UpstreamError("checker down")))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert any("checking trajectory" in n and "checker down" in n for n in state["notes"])
    assert any("from unchecked" in n for n in state["notes"])
    assert final_answer(state["answers"][0]["message"]["content"]) == "80"


async def test_everything_failing_raises_the_upstream_error():
    backend = ScriptedBackend(lambda body: UpstreamError("upstream is down", upstream_status=500))
    with pytest.raises(UpstreamError, match="upstream is down"):
        await run_approach(SPEC, QUESTION, backend)
    assert len(backend.calls) == 2  # the first wave, then it stops


async def test_empty_steps_count_as_failures():
    backend = ScriptedBackend(lambda body: "")
    with pytest.raises(UpstreamError, match="came back empty"):
        await run_approach(SPEC, QUESTION, backend)


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=4))
    graph = SPEC.build().compile()
    with pytest.raises(BudgetExceeded):
        await graph.ainvoke(
            {"messages": QUESTION, "request": {}, "params": SPEC.validate_params({}), "stream_choice": None},
            context=RunContext(run_id="t", llm=llm),
        )


async def test_runs_are_reproducible():
    first, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted()))
    second, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(scripted()))
    assert first["tree"] == second["tree"]


def test_params_and_their_optillm_names():
    defaults = SPEC.validate_params({})
    assert (defaults["max_depth"], defaults["num_rollouts"], defaults["c"]) == (3, 5, 1.4)
    aliased = SPEC.validate_params({"rstar_max_depth": 2, "rstar_num_rollouts": 8, "rstar_c": 2.0})
    assert (aliased["max_depth"], aliased["num_rollouts"], aliased["c"]) == (2, 8, 2.0)
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"max_depth": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"simulations": 3})
    assert SPEC.needs == frozenset({"text"}) and SPEC.papers == ("arXiv:2408.06195",)
