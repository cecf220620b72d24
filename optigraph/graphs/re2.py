"""`re2`: Re-Reading. "Re-Reading Improves Reasoning in Large Language Models" (Xu et al., 2023,
arXiv 2309.06275): stating the question twice ("Read the question again: ...") lets a decoder-only
model attend to the whole question while reading it the second time.

Graph: START -> reread_answer -> END. One call, streamed to the client.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.graphs.chain import chain
from optigraph.nodes.common import answer_of, generation_params
from optigraph.nodes.generate import generate_final
from optigraph.nodes.transform import reread


class Re2Params(ApproachParams):
    """Re-reading has no parameters: the client's generation parameters are used as sent."""


async def reread_answer(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    completion = await generate_final(
        state, runtime, reread(state["messages"]), node="reread_answer", **generation_params(state)
    )
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


def build() -> StateGraph:
    return chain(("reread_answer", reread_answer))


SPEC = ApproachSpec(
    name="re2",
    description="Re-Reading: the question is stated twice before the model answers.",
    build=build,
    params=Re2Params,
    papers=("arXiv:2309.06275",),
    calls="1",
    rounds="1",
    streams_final=True,
)
