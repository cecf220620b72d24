from __future__ import annotations

import asyncio
import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from optigraph.memory.checkpoints import open_checkpointer


class Counter(TypedDict):
    steps: Annotated[list[str], operator.add]


def tiny_graph():
    builder = StateGraph(Counter)
    builder.add_node("first", lambda state: {"steps": ["first"]})
    builder.add_node("second", lambda state: {"steps": ["second"]})
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    return builder


async def test_graph_checkpoints_survive_reopening(db_url: str) -> None:
    config = {"configurable": {"thread_id": "run-1"}}
    async with open_checkpointer(db_url) as saver:
        graph = tiny_graph().compile(checkpointer=saver)
        assert await graph.ainvoke({"steps": []}, config) == {"steps": ["first", "second"]}

    async with open_checkpointer(db_url) as saver:
        graph = tiny_graph().compile(checkpointer=saver)
        state = await graph.aget_state(config)
        assert state.values == {"steps": ["first", "second"]}
        history = [s async for s in graph.aget_state_history(config)]
        assert len(history) >= 3  # input, after first, after second
        assert await saver.aget_tuple({"configurable": {"thread_id": "unknown"}}) is None


async def test_checkpointers_open_concurrently(db_url: str) -> None:
    async def use(thread: str) -> list[str]:
        async with open_checkpointer(db_url) as saver:
            graph = tiny_graph().compile(checkpointer=saver)
            return (await graph.ainvoke({"steps": []}, {"configurable": {"thread_id": thread}}))["steps"]

    assert await asyncio.gather(use("a"), use("b")) == [["first", "second"]] * 2
