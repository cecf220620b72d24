"""Compiling a validated declarative graph into a LangGraph `StateGraph` builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import END, START, StateGraph

from optigraph.core.context import RunContext
from optigraph.core.state import ApproachState
from optigraph.engine.authoring.validate import Graph
from optigraph.nodes import critique as critique_node
from optigraph.nodes import rate as rate_node


def graph_builder(graph: Graph) -> Callable[[], StateGraph]:
    """The spec's `build()`: each node from its kind; plain edges, a conditional fan-out (one branch
    per candidate, skipped for a lone one) before each fan-out node, and a join where a node has
    several predecessors."""

    def build() -> StateGraph:
        g = StateGraph(critique_node.CritiqueState, context_schema=RunContext)
        for n in graph.order:
            kind, settings = graph.nodes[n]
            g.add_node(n, kind.build(n, settings))
        g.add_edge(START, graph.start)
        for n in graph.order:
            targets = graph.successors[n]
            fan = [t for t in targets if graph.nodes[t][0].fan_out]
            for t in targets:
                if t not in fan and len(graph.predecessors[t]) == 1:
                    g.add_edge(n, t)
            for t in fan:
                after = graph.successors[t][0]
                g.add_conditional_edges(n, _fan_out_router(t, after), [t, after])
            if not targets:
                g.add_edge(n, END)
        for n in graph.order:
            preds = graph.predecessors[n]
            if len(preds) > 1:
                g.add_edge(preds, n)  # waits for every branch
            if graph.nodes[n][0].fan_out:
                g.add_edge(n, graph.successors[n][0])
        return g

    return build


def _fan_out_router(node: str, after: str) -> Callable[[ApproachState], Any]:
    def route(state: ApproachState) -> Any:
        return rate_node.rate_each(state, node=node) if len(state.get("candidates") or []) > 1 else after

    route.__name__ = f"route_{node}"
    return route
