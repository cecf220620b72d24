"""A trace span around each node of a graph (telemetry/tracing.py), added when tracing is on.

Each node's runnable is replaced, before the graph is compiled, by one that opens the node's span
and then invokes the original with the same input and config (LangGraph hands the runtime, writer
and store through the config, so the original sees exactly what it would have). Without tracing the
graph is left as it is: no wrapper, no cost.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import StateGraph

from optigraph.telemetry.tracing import Tracing


def trace_nodes(graph: StateGraph, tracing: Tracing, *, approach: str) -> StateGraph:
    """`graph` with every node run inside a span named for it (`node <name>`), tagged `approach`."""
    for name, spec in graph.nodes.items():
        spec.runnable = _traced(name, spec.runnable, tracing, approach)
    return graph


def _traced(name: str, inner: Any, tracing: Tracing, approach: str) -> RunnableCallable:
    async def run(state: Any, config: RunnableConfig) -> Any:
        with tracing.node(name, approach):
            return await inner.ainvoke(state, config)

    return RunnableCallable(None, run, name=name, trace=False)
