import pytest

from optigraph.core.context import RunContext
from optigraph.core.state import ApproachState
from optigraph.graphs import (
    cot_reflection,
    decoding,
    genselect,
    moa,
    none,
    re2,
)
from optigraph.graphs.chain import chain
from optigraph.nodes.critique import CritiqueState


async def first(state):
    return {"notes": ["first"]}


async def second(state):
    return {"notes": ["second"]}


def edges(graph):
    return {(e.source, e.target) for e in graph.compile().get_graph().edges}


def test_steps_are_wired_in_order_from_start_to_end():
    graph = chain(("a", first), ("b", second))
    assert edges(graph) == {("__start__", "a"), ("a", "b"), ("b", "__end__")}
    assert graph.state_schema is ApproachState and graph.context_schema is RunContext


async def test_a_chain_runs_its_steps_one_after_another():
    state = await chain(("a", first), ("b", second)).compile().ainvoke({"messages": [], "notes": []})
    assert state["notes"] == ["first", "second"]


def test_a_chain_needs_a_step():
    with pytest.raises(ValueError, match="at least one step"):
        chain()


@pytest.mark.parametrize(
    ("module", "steps"),
    [
        (none, ["passthrough"]),
        (re2, ["reread_answer"]),
        (cot_reflection, ["reflect"]),
        (genselect, ["sample", "compare"]),
        (moa, ["sample", "critique", "aggregate"]),
    ],
)
def test_the_straight_line_approaches_are_chains(module, steps):
    path = ["__start__", *steps, "__end__"]
    assert edges(module.SPEC.build()) == set(zip(path, path[1:], strict=False))


def test_moa_keeps_its_own_state():
    assert moa.SPEC.build().state_schema is CritiqueState


def test_decoding_approaches_are_one_step():
    for spec in decoding.specs():
        assert edges(spec.build()) == {("__start__", "decode"), ("decode", "__end__")}
