"""`none`: passthrough. The request goes upstream unchanged (unknown fields included)."""

from __future__ import annotations

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.graphs.chain import chain
from optigraph.nodes.common import answer_of
from optigraph.nodes.generate import generate_final


async def passthrough(state: ApproachState, runtime: Runtime[RunContext]) -> dict:
    # The client's fields go as one dict: splatted, a field named `node` or `sink` would clash.
    completion = await generate_final(
        state, runtime, state["messages"], node="passthrough", fields=state.get("request") or {}
    )
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


def build() -> StateGraph:
    return chain(("passthrough", passthrough))


SPEC = ApproachSpec(
    name="none",
    description="Passthrough: forwards the request to the upstream model unchanged.",
    build=build,
    calls="1",
    rounds="1",
    streams_final=True,
)
