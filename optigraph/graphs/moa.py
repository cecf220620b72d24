"""`moa`: mixture of agents with one model. "Mixture-of-Agents Enhances Large Language Model
Capabilities" (Wang et al., 2024, arXiv 2406.04692) layers several models' answers; "Patched MOA:
optimizing inference for diverse software development tasks" (Sharma, 2024, arXiv 2407.18521) does
it with one model: sample three candidates, critique them, and aggregate a final answer.

Graph: START -> sample -> critique -> aggregate -> END. 3 calls (the first with n completions) in 3
dependent rounds; the aggregate streams to the client.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.nodes import critique as critique_node
from optigraph.nodes.aggregate import aggregate
from optigraph.nodes.critique import CritiqueState, critique
from optigraph.nodes.sample import sample_node


class MoaParams(ApproachParams):
    n: int = Field(3, ge=1, le=16, description="Candidates to sample before critique and aggregation.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Sampling temperature; default: the client's, else 1.0."
    )
    critique_temperature: float = Field(critique_node.DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    critique_max_tokens: int = Field(critique_node.DEFAULT_MAX_TOKENS, ge=1, le=32768)
    aggregate_temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Temperature of the final answer; default: the client's, else 0.1."
    )


def build() -> StateGraph:
    graph = StateGraph(CritiqueState, context_schema=RunContext)
    graph.add_node("sample", sample_node(count="n", default_temperature=1.0))
    graph.add_node("critique", critique)
    graph.add_node("aggregate", aggregate)
    graph.add_edge(START, "sample")
    graph.add_edge("sample", "critique")
    graph.add_edge("critique", "aggregate")
    graph.add_edge("aggregate", END)
    return graph


SPEC = ApproachSpec(
    name="moa",
    description="Mixture of agents: samples 3 candidates, critiques them, aggregates a final answer.",
    build=build,
    params=MoaParams,
    papers=("arXiv:2406.04692", "arXiv:2407.18521"),
    calls="3",
    rounds="3",
    streams_final=True,
)
