import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from scripted import ScriptedBackend, last_user  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.core.state import ApproachState  # noqa: E402
from optigraph.errors import BudgetExceeded, UpstreamError  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402
from optigraph.nodes import plan  # noqa: E402
from optigraph.nodes.plan import (  # noqa: E402
    derive_messages,
    follow_plan_messages,
    numbered,
    observations_messages,
    parse_list,
    sketch_messages,
)

MESSAGES = [
    {"role": "system", "content": "Be precise."},
    {"role": "user", "content": "Earlier question"},
    {"role": "assistant", "content": "Earlier answer"},
    {"role": "user", "content": "Count the inversions of an array."},
]


# ---- parse_list -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. a\n2. b\n3. c", ["a", "b", "c"]),
        ("1) a\n2) b", ["a", "b"]),
        ("(1) a\n(2) b", ["a", "b"]),
        ("- a\n* b\n• c", ["a", "b", "c"]),
        ("Here are 3 observations:\n1. a\n2. b\n\nThese should help.", ["a", "b"]),
        ("1. first line\n   continues here\n2. b", ["first line continues here", "b"]),
        ("1. a\n\n2. b\n\n3. c", ["a", "b", "c"]),
        ("- a\n  - nested\n- b", ["a - nested", "b"]),
        ("**Observation 1:** a\n**Observation 2:** b", ["a", "b"]),
        ("Observation 1: a\nObservation 2: b", ["a", "b"]),
        ("### Observation 1\n\nText one.\n\n### Observation 2\n\nText two.", ["Text one.", "Text two."]),
        ("## Observations\n1. x\n2. y", ["x", "y"]),
        ("1. **Bold idea**\n2. use x**2 here", ["Bold idea", "use x**2 here"]),
        ("alpha\nbeta\ngamma", ["alpha", "beta", "gamma"]),
        ("Observations:\nalpha\nbeta", ["alpha", "beta"]),
        ("<think>1. scratch</think>\n1. kept", ["kept"]),
        ("None.", []),
        ("", []),
        ("   \n\n", []),
    ],
)
def test_parse_list(text, expected):
    assert parse_list(text) == expected


def test_parse_list_limit():
    assert parse_list("1. a\n2. b\n3. c", limit=2) == ["a", "b"]


def test_numbered():
    assert numbered(["a", "b"]) == "1. a\n2. b"
    assert numbered([]) == ""


# ---- messages -------------------------------------------------------------------------------------


def test_messages_keep_the_conversation_and_carry_the_query():
    for built in (
        observations_messages(MESSAGES, 3),
        derive_messages(MESSAGES, ["o1", "o2"], 2),
        sketch_messages(MESSAGES, ["o1"]),
        follow_plan_messages(MESSAGES, "the plan"),
    ):
        assert built[:3] == MESSAGES[:3]
        assert built[3]["role"] == "user" and "Count the inversions of an array." in built[3]["content"]
    assert "write 3 useful" in observations_messages(MESSAGES, 3)[-1]["content"]
    derive_prompt = derive_messages(MESSAGES, ["o1", "o2"], 2)[-1]["content"]
    assert "1. o1\n2. o2" in derive_prompt and "derive 2 new observations" in derive_prompt
    assert "1. o1" in sketch_messages(MESSAGES, ["o1"])[-1]["content"]
    assert sketch_messages(MESSAGES, [])[-1]["content"] == plan.SKETCH_PROMPT_UNOBSERVED.format(
        query="Count the inversions of an array."
    )
    assert "the plan" in follow_plan_messages(MESSAGES, "the plan")[-1]["content"]


def test_follow_plan_without_a_plan():
    with_observations = follow_plan_messages(MESSAGES, "  ", ["o1"])[-1]["content"]
    assert "Observations that may help" in with_observations and "1. o1" in with_observations
    assert follow_plan_messages(MESSAGES, "", []) == MESSAGES


def test_prompts_are_not_only_for_competitive_programming():
    for prompt in (plan.OBSERVATIONS_PROMPT, plan.DERIVE_PROMPT, plan.SKETCH_PROMPT, plan.FOLLOW_PLAN_PROMPT):
        assert "competitive" not in prompt.lower() and "stdin" not in prompt.lower()
    assert "If the task asks for code" in plan.FOLLOW_PLAN_PROMPT


# ---- nodes ----------------------------------------------------------------------------------------


class S(ApproachState, total=False):
    observations: list[str]
    derived_observations: list[str]
    plan: str


def chain(*nodes):
    graph = StateGraph(S, context_schema=RunContext)
    names = [n.__name__ for n in nodes]
    for node in nodes:
        graph.add_node(node.__name__, node)
    for a, b in zip([START, *names], [*names, END]):
        graph.add_edge(a, b)
    return graph


async def run(graph, backend, params, budget=None):
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=budget)
    return await graph.compile().ainvoke(
        {"messages": MESSAGES, "request": {"seed": 5, "tools": [{"type": "function"}]}, "params": params},
        context=RunContext(run_id="t", llm=llm),
    )


def responder(body):
    prompt = last_user(body)
    if "useful, non-obvious observations" in prompt:
        return "Observations:\n1. sorted halves merge\n2. counts add up\n3. n can be 0"
    if "new observations" in prompt:
        return "- merge counts cross pairs"
    return "Use merge sort and count while merging."


async def test_observe_derive_sketch_nodes_over_state_keys():
    backend = ScriptedBackend(responder)
    graph = chain(
        plan.observe_node(), plan.derive_node(), plan.sketch_node(sources=("observations", "derived_observations"))
    )
    state = await run(graph, backend, {"num_observations": 2, "num_derived": 1})
    assert state["observations"] == ["sorted halves merge", "counts add up"]  # limited to 2
    assert state["derived_observations"] == ["merge counts cross pairs"]
    assert state["plan"] == "Use merge sort and count while merging."
    observe, derive, sketch = backend.calls
    assert "write 2 useful" in last_user(observe)
    assert "1. sorted halves merge\n2. counts add up" in last_user(derive)
    assert "3. merge counts cross pairs" in last_user(sketch)
    for call in backend.calls:
        assert call["temperature"] == plan.DEFAULT_TEMPERATURE and call["max_tokens"] == plan.DEFAULT_MAX_TOKENS
        assert call["seed"] == 5 and "tools" not in call  # planning calls carry none of the client's tools
    assert state["usage"]["calls"] == 3


async def test_planning_parameters_override_the_defaults():
    backend = ScriptedBackend(responder)
    await run(
        chain(plan.observe_node()),
        backend,
        {"num_observations": 3, "planning_temperature": 0.2, "planning_max_tokens": 99},
    )
    assert backend.calls[0]["temperature"] == 0.2 and backend.calls[0]["max_tokens"] == 99


async def test_derive_makes_no_call_without_observations_or_count():
    backend = ScriptedBackend(responder)
    state = await run(chain(plan.derive_node()), backend, {"num_derived": 2})
    assert state["derived_observations"] == [] and backend.calls == []
    state = await run(
        chain(plan.observe_node(), plan.derive_node()), backend, {"num_observations": 3, "num_derived": 0}
    )
    assert state["derived_observations"] == [] and len(backend.calls) == 1


async def test_failed_and_unparsable_steps_are_noted_not_fatal():
    def respond(body):
        prompt = last_user(body)
        if "useful, non-obvious observations" in prompt:
            return UpstreamError("observer down")
        return ""

    backend = ScriptedBackend(respond)
    state = await run(chain(plan.observe_node(), plan.sketch_node()), backend, {"num_observations": 3})
    assert state["observations"] == [] and state["plan"] == ""
    assert any("observe: observations failed: observer down" in n for n in state["notes"])
    assert any("sketch: the plan came back empty" in n for n in state["notes"])
    # the sketch was asked without observations
    assert last_user(backend.calls[-1]) == plan.SKETCH_PROMPT_UNOBSERVED.format(
        query="Count the inversions of an array."
    )

    backend = ScriptedBackend(lambda body: "I cannot think of anything useful here.\n\nSorry.")
    state = await run(chain(plan.observe_node()), backend, {"num_observations": 3})
    # plain lines are read as items rather than dropped
    assert state["observations"] == ["I cannot think of anything useful here.", "Sorry."]
    backend = ScriptedBackend(lambda body: "None")
    state = await run(chain(plan.observe_node()), backend, {"num_observations": 3})
    assert state["observations"] == [] and any("no observations found" in n for n in state["notes"])


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(responder)
    graph = chain(plan.observe_node(), plan.derive_node())
    with pytest.raises(BudgetExceeded):
        await run(graph, backend, {"num_observations": 3, "num_derived": 2}, budget=Budget(max_calls=1))
