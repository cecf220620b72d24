import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from scripted import ScriptedBackend, last_user  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, UpstreamError  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402
from optigraph.nodes.refine import NO_FEEDBACK, RefineState, refine, refine_sends  # noqa: E402

QUESTION = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 6 x 7?"}]
TOOLS = [{"type": "function", "function": {"name": "calc"}}]


def graph(jobs) -> StateGraph:
    g = StateGraph(RefineState, context_schema=RunContext)
    g.add_node("refine", refine)
    g.add_conditional_edges(START, lambda s: refine_sends(s, jobs), ["refine"])
    g.add_edge("refine", END)
    return g


async def run(backend, jobs, *, request=None, params=None, budget=None):
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=budget)
    state = {"messages": QUESTION, "request": request or {}, "params": params or {}}
    return await graph(jobs).compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))


def current(body):
    return last_user(body).split("A response to the query:\n", 1)[1].split("\n\n", 1)[0]


async def test_solutions_are_rewritten_from_their_feedback_with_the_client_parameters():
    backend = ScriptedBackend(lambda body: f"fixed {current(body)}")
    jobs = [
        {"id": 0, "text": "48", "feedback": "- 6 x 7 is not 48", "round": 3, "temperature": 0.48},
        {"id": 5, "text": "41", "feedback": ""},
    ]
    state = await run(backend, jobs, request={"temperature": 0.9, "max_tokens": 64, "tools": TOOLS})
    got = {r["id"]: (r["text"], r["round"], r["kind"]) for r in state["refined"]}
    assert got == {0: ("fixed 48", 3, "solution"), 5: ("fixed 41", 0, "solution")}
    bodies = {current(b): b for b in backend.calls}
    assert bodies["48"]["temperature"] == 0.48 and bodies["41"]["temperature"] == 0.9
    assert "- 6 x 7 is not 48" in last_user(bodies["48"]) and NO_FEEDBACK in last_user(bodies["41"])
    for body in backend.calls:
        assert body["messages"][0] == QUESTION[0]
        assert "Original query: What is 6 x 7?" in last_user(body)
        assert body["max_tokens"] == 64 and body["tools"] == TOOLS  # the rewrite is an answer
    assert state["usage"]["calls"] == 2


async def test_a_query_is_rewritten_inside_tags_as_an_internal_call():
    backend = ScriptedBackend(lambda body: "Sure.\n<query>What is 6 x 7? Multiply, do not add.</query>")
    jobs = [{"id": 0, "kind": "query", "text": "What is 6 x 7?", "feedback": "Attempt 1: added instead"}]
    state = await run(backend, jobs, request={"temperature": 0.9, "tools": TOOLS, "reasoning_effort": "low"})
    assert state["refined"][0]["text"] == "What is 6 x 7? Multiply, do not add."
    (body,) = backend.calls
    assert "Attempt 1: added instead" in last_user(body)
    assert body["temperature"] == 0.5 and body["max_tokens"] == 1024 and "tools" not in body
    assert body["reasoning_effort"] == "low"


async def test_failed_or_empty_rewrites_keep_the_original():
    replies = {"48": UpstreamError("boom"), "41": "   "}
    backend = ScriptedBackend(lambda body: replies[current(body)])
    state = await run(backend, [{"id": 0, "text": "48", "feedback": "x"}, {"id": 1, "text": "41", "feedback": "y"}])
    assert not state.get("refined")
    notes = "\n".join(state["notes"])
    assert "rewriting solution 0 failed, keeping it: boom" in notes
    assert "the rewrite of solution 1 came back empty" in notes


async def test_rewrites_run_concurrently():
    backend = ScriptedBackend(lambda body: "better", waves=[4])
    jobs = [{"id": i, "text": str(i), "feedback": "f"} for i in range(4)]
    state = await run(backend, jobs)
    assert backend.wave_errors == []  # all 4 rewrites in flight together
    assert len(state["refined"]) == 4 and backend.max_in_flight == 4


async def test_budget_exceeded_propagates():
    with pytest.raises(BudgetExceeded):
        await run(
            ScriptedBackend(lambda body: "x"),
            [{"id": i, "text": "t", "feedback": "f"} for i in range(3)],
            budget=Budget(max_calls=1),
        )
