"""A straight-line graph: the wiring shared by every approach whose steps run one after another."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from optigraph.core.context import RunContext
from optigraph.core.state import ApproachState


def chain(*steps: tuple[str, Any], state: type[Any] = ApproachState) -> StateGraph:
    """A StateGraph over `state` (with the run context) that runs `steps`, each a (name, node
    function) pair, in order: START -> first -> ... -> last -> END."""
    if not steps:
        raise ValueError("a chain needs at least one step")
    graph = StateGraph(state, context_schema=RunContext)
    previous = START
    for name, node in steps:
        graph.add_node(name, node)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph
