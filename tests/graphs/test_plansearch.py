import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.plansearch import SPEC, observation_subsets  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402
from optigraph.nodes import plan  # noqa: E402

QUERY = "Write a function that returns the number of inversions in a list."
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": QUERY}]
OBSERVATIONS = ["merge sort can count pairs", "the list may be empty", "values may repeat"]


def stage(body):
    prompt = last_user(body)
    if "useful, non-obvious observations" in prompt:
        return "observe"
    if "new observations" in prompt:
        return "derive"
    if "in natural language how to solve" in prompt:
        return "sketch"
    if "BEST CANDIDATE" in prompt:
        return "compare"
    return "implement"


def used(prompt, observations=OBSERVATIONS):
    """Which first-order observations a prompt shows, as their positions; for an implementation,
    those its plan was made from."""
    if "plan for (" in prompt:
        return tuple(int(i) for i in re.search(r"plan for \(([\d, ]*)\)", prompt).group(1).replace(",", " ").split())
    return tuple(i for i, o in enumerate(observations) if o in prompt)


def scripted(
    observe="Here are three observations:\n1. merge sort can count pairs\n2. the list may be empty\n"
    "3. values may repeat",
    derive=None,
    sketch=None,
    implement=None,
    compare="BEST CANDIDATE: 2",
):
    """Derived observations, plans and solutions name the subset they came from."""

    def respond(body):
        prompt = last_user(body)
        kind = stage(body)
        if kind == "observe":
            return observe
        if kind == "derive":
            if derive is not None:
                return derive(prompt) if callable(derive) else derive
            return "\n".join(f"- derived from {used(prompt)} #{k}" for k in range(2))
        if kind == "sketch":
            if sketch is not None:
                return sketch(prompt) if callable(sketch) else sketch
            return f"plan for {used(prompt)}"
        if kind == "implement":
            if implement is not None:
                return implement(prompt) if callable(implement) else implement
            return f"Explanation.\n```python\n# solution for {used(prompt)}\n```"
        return compare

    return respond


async def test_full_path_calls_and_messages():
    backend = ScriptedBackend(scripted())
    request = {"temperature": 0.4, "max_tokens": 900, "seed": 3}
    state, _ = await run_approach(SPEC, MESSAGES, backend, request=request)
    params = SPEC.validate_params({})
    assert len(backend.calls) == evaluate(SPEC.calls, params) == 11
    stages = [stage(b) for b in backend.calls]
    assert stages == ["observe"] + ["derive"] * 3 + ["sketch"] * 3 + ["implement"] * 3 + ["compare"]

    observe = backend.calls[0]
    assert (
        observe["messages"][0] == MESSAGES[0] and QUERY in last_user(observe) and "write 3 useful" in last_user(observe)
    )
    assert observe["temperature"] == plan.DEFAULT_TEMPERATURE and observe["max_tokens"] == plan.DEFAULT_MAX_TOKENS
    assert state["observations"] == OBSERVATIONS

    # the paper's combinatorial search: second-order observations from each pair of first-order ones
    derives = [b for b in backend.calls if stage(b) == "derive"]
    assert sorted(used(last_user(b)) for b in derives) == [(0, 1), (0, 2), (1, 2)]
    assert all("derive 2 new observations" in last_user(b) for b in derives)

    # each plan sees its subset and what was derived from it, and nothing else
    for b in (b for b in backend.calls if stage(b) == "sketch"):
        prompt = last_user(b)
        subset = used(prompt)
        assert len(subset) == 2
        assert f"derived from {subset} #0" in prompt and f"derived from {subset} #1" in prompt
        assert "derived from" not in prompt.replace(f"derived from {subset}", "")

    # each implementation follows its own plan, at the client's generation parameters
    for b in (b for b in backend.calls if stage(b) == "implement"):
        prompt = last_user(b)
        assert prompt.startswith(QUERY) and "Here is a plan for solving this:" in prompt
        assert b["temperature"] == 0.4 and b["max_tokens"] == 900 and b["seed"] == 3
        assert b["messages"][0] == MESSAGES[0]

    compare = backend.calls[-1]
    for subset in [(0, 1), (0, 2), (1, 2)]:
        assert f"# solution for {subset}" in last_user(compare)
    # candidate 2 (index 1) is the second subset's solution, returned with its explanation
    assert state["answers"][0]["message"]["content"] == "Explanation.\n```python\n# solution for (0, 2)\n```"
    assert sorted((p["index"], tuple(p["subset"])) for p in state["plans"]) == [
        (0, tuple(OBSERVATIONS[:2])),
        (1, (OBSERVATIONS[0], OBSERVATIONS[2])),
        (2, tuple(OBSERVATIONS[1:])),
    ]
    assert all(p["plan"] == f"plan for {used(' '.join(p['subset']))}" for p in state["plans"])

    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"num_solutions": 1},
        {"num_derived": 0},
        {"num_solutions": 5, "num_observations": 4},
        {"num_solutions": 8, "subset_size": 3},
    ],
)
async def test_call_count_matches_the_formula(params):
    backend = ScriptedBackend(scripted(observe="1. a\n2. b\n3. c\n4. d"))
    await run_approach(SPEC, MESSAGES, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params))


async def test_branches_run_concurrently():
    waves = [1, 3, 3, 3, 1]  # observe; derive, sketch and implement per solution together; compare
    backend = ScriptedBackend(scripted(), waves=waves)
    await run_approach(SPEC, MESSAGES, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params({}))
    assert backend.wave_errors == [] and len(backend.calls) == sum(waves)
    assert rounds == len(waves) == 5
    assert backend.max_in_flight == 3


async def test_one_solution_streams_its_implementation_without_a_comparison():
    sink = StreamSink()
    backend = ScriptedBackend(scripted(implement="just one"))
    state, _ = await run_approach(SPEC, MESSAGES, backend, params={"num_solutions": 1}, sink=sink, stream_choice=0)
    assert [stage(b) for b in backend.calls] == ["observe", "derive", "sketch", "implement"]
    assert backend.calls[-1].get("stream") is True
    assert all(b.get("stream") is None for b in backend.calls[:-1])
    assert sink.streamed == {0}
    assert state["answers"][0]["message"]["content"] == "just one"
    assert evaluate(SPEC.rounds, SPEC.validate_params({"num_solutions": 1})) == 4


async def test_no_derivation_step_when_num_derived_is_zero():
    backend = ScriptedBackend(scripted())
    await run_approach(SPEC, MESSAGES, backend, params={"num_derived": 0})
    assert "derive" not in [stage(b) for b in backend.calls]
    sketch = next(b for b in backend.calls if stage(b) == "sketch")
    assert "derived from" not in last_user(sketch)


def test_observation_subsets():
    assert observation_subsets(3, 3, 2) == [(0, 1), (0, 2), (1, 2)]
    assert observation_subsets(3, 5, 2) == [(0, 1), (0, 2), (1, 2), (0,), (1,)]
    assert observation_subsets(2, 4, 2) == [(0, 1), (0,), (1,), (0, 1)]  # more solutions than subsets: repeats
    assert observation_subsets(1, 2, 3) == [(0,), (0,)]
    assert observation_subsets(0, 2, 2) == [(), ()]


async def test_messy_observations_are_parsed():
    messy = "Sure! Some thoughts:\n\n* **merge sort can count pairs**\n* the list may be\n  empty\n\nHope this helps."
    backend = ScriptedBackend(scripted(observe=messy))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert state["observations"] == ["merge sort can count pairs", "the list may be empty"]
    # two observations: one pair, then each alone
    derives = [used(last_user(b)) for b in backend.calls if stage(b) == "derive"]
    assert sorted(derives) == [(0,), (0, 1), (1,)]


async def test_no_observations_plans_from_the_task_alone():
    backend = ScriptedBackend(scripted(observe=""))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    stages = [stage(b) for b in backend.calls]
    assert "derive" not in stages and stages.count("sketch") == 3 and stages.count("implement") == 3
    sketch = next(b for b in backend.calls if stage(b) == "sketch")
    assert last_user(sketch) == plan.SKETCH_PROMPT_UNOBSERVED.format(query=QUERY)
    assert any("observe: no observations found" in n for n in state["notes"])
    assert len(backend.calls) < evaluate(SPEC.calls, SPEC.validate_params({}))

    backend = ScriptedBackend(scripted(observe=UpstreamError("observer down")))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert any("observations failed: observer down" in n for n in state["notes"])
    assert state["answers"][0]["message"]["content"]


async def test_failed_plan_implements_from_the_observations():
    backend = ScriptedBackend(
        scripted(sketch=lambda p: UpstreamError("planner down") if used(p) == (0, 1) else "a plan")
    )
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    implements = [last_user(b) for b in backend.calls if stage(b) == "implement"]
    without_plan = [p for p in implements if "Observations that may help" in p]
    assert len(without_plan) == 1 and used(without_plan[0]) == (0, 1) and "derived from (0, 1)" in without_plan[0]
    assert any("sketch: plan failed: planner down" in n for n in state["notes"])


async def test_derive_failure_keeps_the_subset():
    backend = ScriptedBackend(scripted(derive=lambda p: UpstreamError("no") if used(p) == (1, 2) else "1. x"))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    failed = next(p for p in state["plans"] if p["index"] == 2)
    assert failed["derived"] == [] and failed["subset"] == OBSERVATIONS[1:]
    assert any("derive: derived observations failed: no" in n for n in state["notes"])


async def test_failed_and_empty_implementations_leave_the_survivors():
    def implement(prompt):
        return {(0, 1): UpstreamError("boom"), (0, 2): ""}.get(used(prompt), "the survivor")

    backend = ScriptedBackend(scripted(implement=implement, compare="BEST CANDIDATE: 1"))
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    # one usable implementation: nothing to compare
    assert "compare" not in [stage(b) for b in backend.calls]
    assert state["answers"][0]["message"]["content"] == "the survivor"
    assert any("implement: solution 0 failed: boom" in n for n in state["notes"])
    assert any("implement: solution 1 came back empty" in n for n in state["notes"])


async def test_comparison_sees_only_usable_implementations():
    backend = ScriptedBackend(
        scripted(implement=lambda p: "" if used(p) == (0, 1) else f"code {used(p)}", compare="Candidate 2 is the best.")
    )
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    prompt = last_user(backend.calls[-1])
    assert "Candidate 3" not in prompt and "Candidate 1:\ncode (0, 2)" in prompt
    assert state["answers"][0]["message"]["content"] == "code (1, 2)"


async def test_unreadable_or_failed_comparison_still_answers():
    for compare in ("They are all fine.", UpstreamError("judge down")):
        backend = ScriptedBackend(scripted(compare=compare))
        state, _ = await run_approach(SPEC, MESSAGES, backend)
        assert state["answers"][0]["message"]["content"].startswith("Explanation.")
        assert any("compare:" in n for n in state["notes"])


async def test_every_implementation_failing_raises():
    backend = ScriptedBackend(scripted(implement=UpstreamError("implementer down")))
    with pytest.raises(UpstreamError, match="every implementation failed"):
        await run_approach(SPEC, MESSAGES, backend)


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(scripted())
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=5))
    params = SPEC.validate_params({})
    with pytest.raises(BudgetExceeded):
        await (
            SPEC.build()
            .compile()
            .ainvoke({"messages": MESSAGES, "request": {}, "params": params}, context=RunContext(run_id="t", llm=llm))
        )


async def test_non_code_question_gets_a_plain_answer():
    question = [{"role": "user", "content": "How should I schedule three meetings across two time zones?"}]
    backend = ScriptedBackend(
        scripted(
            observe="1. overlap hours\n2. attendee priority\n3. daylight saving",
            implement="Schedule them 9-11 in the earlier zone.",
        )
    )
    state, _ = await run_approach(SPEC, question, backend)
    implement = next(last_user(b) for b in backend.calls if stage(b) == "implement")
    assert "If the task asks for code" in implement and "Otherwise give the complete answer" in implement
    assert state["answers"][0]["message"]["content"] == "Schedule them 9-11 in the earlier zone."


def test_graph_structure_and_params():
    graph = SPEC.build().compile().get_graph()
    assert set(graph.nodes) >= {"observe", "derive", "sketch", "implement", "choose"}
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "observe"),
        ("observe", "derive"),
        ("derive", "sketch"),
        ("sketch", "implement"),
        ("implement", "choose"),
        ("choose", "__end__"),
    } <= edges
    defaults = SPEC.validate_params(None)
    assert (defaults["num_observations"], defaults["num_derived"], defaults["num_solutions"]) == (3, 2, 3)
    assert evaluate(SPEC.calls, defaults) == 11 and evaluate(SPEC.rounds, defaults) == 5
    assert evaluate(SPEC.calls, {**defaults, "num_solutions": 1}) == 4  # OptILLM's single chain
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"num_solutions": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"n": 2})
    assert SPEC.needs == frozenset({"text"}) and SPEC.papers == ("arXiv:2409.03733",)
